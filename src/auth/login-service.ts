/**
 * The login, for every front door, without a socket: the IMAP and POP3
 * sessions (and, in time, the web page) hand it what the client sent and get
 * back a typed outcome; everything in between is decided here, in one place:
 *
 *   store writable? -> admission (blocks, per-client concurrency)
 *   -> policy (who may log in, and how) -> upstream login
 *   -> recording (penalties, audit row, metrics, the `login failed` line
 *      fail2ban reads) -> refusal timing and the penalty delay.
 *
 * Every refusal goes through `refuse` and every temporary answer through
 * `temporary`, so none of them can skip the counting, the audit or the delay.
 * The outcome says what happened and how long the answer was held back; the
 * protocol only chooses its words.
 */
import { clipName, type Logger } from '../log/logger.js';
import type { RepeatedLines } from '../log/repeated-lines.js';
import type { Store } from '../store/store.js';
import type { Account, AppPasswordInfo, Channel } from '../store/types.js';
import type { ClientOrigin, UpstreamLoginResult } from '../upstream/credentials.js';
import type { UpstreamLogin } from '../upstream/upstreams.js';
import { errorMessage } from '../errors.js';
import type { AbuseGuard, Admission } from './abuse.js';
import { clientKey } from './client-key.js';
import type { AuthAttempt, AuthDecision, AuthPolicy, RefusalReason, TemporaryReason } from './policy.js';
import type { RefusalTiming } from './refusal-timing.js';

export type { Channel };

export interface LoginRequest {
  channel: Channel;
  /** The username exactly as the client sent it (SASL: the authcid). */
  username: string;
  /** SASL PLAIN's authzid as sent; '' when none. */
  authzid?: string;
  password: Buffer;
  /** How the client sent them, for the log: login, authenticate-plain, user-pass... */
  method: string;
  /** The client (from the socket, or a trusted PROXY header), in canonical form. */
  client: { address: string; port: number };
  /** The listener the client reached, forwarded upstream with the client's address. */
  local: { address: string; port: number };
  /** What the client said about itself (IMAP ID). */
  clientId: { name?: string; version?: string };
  /** Names the session in the log and upstream (x-session-ext-id). */
  sessionId: string;
  /** Fires when the client hangs up: the upstream dialogue stops, nothing is recorded. */
  signal: AbortSignal;
}

export type LoggedIn = Extract<UpstreamLoginResult, { ok: true }>;

/** The page's password step, proved by the upstream (internal to the service). */
interface PasswordOk {
  kind: 'password-ok';
  account: Account | null;
  user: string;
}

export type LoginOutcome =
  /** In: the upstream session to relay to, and who logged in how. */
  | {
      kind: 'logged-in';
      mode: 'app-password' | 'upstream-password';
      /** The account mailgate knows, or null for a name passed through. */
      account: Account | null;
      appPassword: AppPasswordInfo | null;
      /** The name as logged in upstream. */
      user: string;
      upstream: LoggedIn;
    }
  /** A credential failure: counted, audited, answered after `delayMs` (already served when the outcome arrives). */
  | { kind: 'refused'; reason: RefusalReason; delayMs: number }
  /**
   * Not the credentials' fault, or not checked (blocked, hashing busy, store
   * or upstream down): answered after `delayMs`. `countsAsFailure`: one a
   * client can bring about at will, which counts towards the connection's limit.
   */
  | { kind: 'temporary'; reason: TemporaryReason; delayMs: number; countsAsFailure: boolean }
  /** The credentials were right, but the mailbox is busy (RFC 2449 IN-USE / LOGIN-DELAY). */
  | { kind: 'in-use'; code: 'IN-USE' | 'LOGIN-DELAY' }
  /** The client left before the verdict: nobody to answer. */
  | { kind: 'abandoned' };

/** How the self-service page's password step ended. */
export type SignInOutcome =
  /** Signed in (no two-step verification, or a code was not asked for: a re-authentication). */
  | { kind: 'signed-in'; account: Account }
  /** The password was right; two-step verification is on: a code (or recovery code) comes next. */
  | { kind: 'code-needed'; account: Account }
  | Extract<LoginOutcome, { kind: 'refused' | 'temporary' | 'abandoned' }>;

/** A second-factor code for the page: the current TOTP code, or one recovery code. */
export interface CodeRequest extends Omit<LoginRequest, 'channel' | 'password' | 'method' | 'authzid'> {
  kind: 'totp' | 'recovery-code';
  code: string;
}

export type CodeOutcome = { kind: 'accepted' } | Extract<LoginOutcome, { kind: 'refused' | 'temporary' }>;

/** Where login results are counted (the metrics); a plain interface so the service needs no metrics library. */
export interface LoginEvents {
  login(channel: Channel, result: 'ok' | 'failed' | 'temporary' | 'blocked'): void;
}

export interface LoginServiceDeps {
  store: Store;
  policy: AuthPolicy;
  guard: AbuseGuard;
  refusalTiming: RefusalTiming;
  upstream: UpstreamLogin;
  events: LoginEvents;
  log: Logger;
  repeatedLines: RepeatedLines;
  /** How the service waits; tests pass one that records instead of sleeping. */
  sleep?: (ms: number) => Promise<void>;
}

/** What every refusal and temporary answer of one attempt shares. */
interface Attempt {
  request: LoginRequest;
  auth: AuthAttempt;
  /** The account failures and blocks count against (Dovecot reads "alice*x" as alice). */
  account: string;
  clientKey: string;
  startedAt: number;
}

export class LoginService {
  private readonly sleep: (ms: number) => Promise<void>;

  constructor(private readonly deps: LoginServiceDeps) {
    this.sleep = deps.sleep ?? ((ms) => (ms > 0 ? new Promise((resolve) => setTimeout(resolve, ms)) : Promise.resolve()));
  }

  async login(request: LoginRequest): Promise<LoginOutcome> {
    if (request.channel === 'web') throw new Error('the page signs in through signIn()');
    const outcome = (await this.decide(request)) as LoginOutcome;
    // The answer waits, after the client's slot was given back: cheap for a
    // person, expensive for a guesser.
    if ('delayMs' in outcome) await this.sleep(outcome.delayMs);
    return outcome;
  }

  /**
   * Everything but the waiting: the outcome, counted and recorded, with the
   * delay still to serve. On the page's channel a right password ends in
   * 'password-ok' (the upstream session is logged out at once).
   */
  private async decide(request: LoginRequest): Promise<LoginOutcome | PasswordOk> {
    const { store, guard, policy } = this.deps;
    const attempt = this.attempt(request);
    try {
      // While the store cannot be written, no password is checked: a guesser's
      // failures could not be counted, nor a success recorded.
      await store.writable();
    } catch (err) {
      return this.unavailable(attempt, err);
    }
    let admission: Admission;
    try {
      admission = await guard.admit(attempt.clientKey, attempt.account, request.password);
    } catch (err) {
      return this.unavailable(attempt, err);
    }
    if (!admission.ok) return this.blocked(attempt, admission.blockedBy);
    // The client's credential-check slot is held until the verdict is in and
    // counted, the upstream's included: a client cannot have more guesses in
    // flight by choosing passwords the upstream checks, nor slip one in
    // before the last one's failure is counted.
    try {
      const decision = await policy.decide(admission.appPasswordsOnly ? { ...attempt.auth, appPasswordsOnly: true } : attempt.auth);
      if (decision.outcome === 'refuse') return await this.refuse(attempt, decision);
      if (decision.outcome === 'temporary') return await this.temporary(attempt, decision);
      // The page checks the account password against the IMAP server.
      const protocol = request.channel === 'web' ? 'imap' : request.channel;
      const upstream = request.signal.aborted ? null : await this.deps.upstream.login(protocol, decision.upstream, this.origin(request), request.signal);
      if (!upstream || request.signal.aborted) {
        // The client hung up meanwhile: nobody to relay for, nothing to record.
        if (upstream?.ok) upstream.socket.destroy();
        return { kind: 'abandoned' };
      }
      return await this.afterUpstream(attempt, decision, upstream);
    } finally {
      admission.release();
    }
  }

  /**
   * The self-service page's password step (channel 'web'): the same
   * admission, penalties, refusal timing and failure lines as a mail login;
   * the password is checked by logging in to the IMAP upstream with the
   * user's own credentials, then logging out. A name the mail server knows
   * but mailgate does not is added as an account when self-enrolment is on.
   */
  async signIn(request: Omit<LoginRequest, 'channel'>): Promise<SignInOutcome> {
    const outcome = await this.decide({ ...request, channel: 'web' });
    if ('delayMs' in outcome) await this.sleep(outcome.delayMs);
    if (outcome.kind === 'refused' || outcome.kind === 'temporary' || outcome.kind === 'abandoned') return outcome;
    if (outcome.kind !== 'password-ok') throw new Error(`the page sign-in ended in "${outcome.kind}"`);
    // A name the mail server knows but mailgate does not (self-enrolment): it becomes an account now.
    const account = outcome.account ?? (await this.enrol(request, outcome.user));
    if (account.totpState === 'enabled') return { kind: 'code-needed', account };
    await this.signedIn(request, account, 'password');
    return { kind: 'signed-in', account };
  }

  /**
   * The page's second step: a TOTP code (each accepted once, ±1 step) or a
   * recovery code (each good once). Guessed like passwords, so counted like
   * them: refused while the client or the account is blocked, and a wrong
   * one is a failed login of that client and that account.
   */
  async verifyCode(request: CodeRequest): Promise<CodeOutcome> {
    const outcome = await this.decideCode(request);
    if ('delayMs' in outcome) await this.sleep(outcome.delayMs);
    return outcome;
  }

  private async decideCode(request: CodeRequest): Promise<CodeOutcome> {
    const { store, guard } = this.deps;
    const attempt = this.attempt({ ...request, channel: 'web', password: Buffer.from(request.code, 'utf8'), method: request.kind });
    try {
      await store.writable();
    } catch (err) {
      return this.unavailable(attempt, err) as Promise<CodeOutcome>;
    }
    let admission: Admission;
    try {
      admission = await guard.admit(attempt.clientKey, attempt.account, attempt.request.password);
    } catch (err) {
      return this.unavailable(attempt, err) as Promise<CodeOutcome>;
    }
    // A blocked account's owner may only use an app password, and the page takes none.
    if (!admission.ok || admission.appPasswordsOnly) {
      if (admission.ok) admission.release();
      return this.blocked(attempt, admission.ok ? 'account' : admission.blockedBy) as Promise<CodeOutcome>;
    }
    try {
      const accepted = request.kind === 'totp' ? await store.totp.verify(request.username, request.code) : await store.recoveryCodes.consume(request.username, request.code);
      if (!accepted) return (await this.refuse(attempt, { outcome: 'refuse', reason: 'wrong-code', username: attempt.account })) as CodeOutcome;
    } catch (err) {
      return this.unavailable(attempt, err) as Promise<CodeOutcome>;
    } finally {
      admission.release();
    }
    const account = await store.accounts.get(request.username);
    await this.signedIn(request, account, request.kind);
    return { kind: 'accepted' };
  }

  /** Adds the account of a self-enrolling user (or finds it, if another sign-in just added it). */
  private async enrol(request: Omit<LoginRequest, 'channel'>, user: string): Promise<Account> {
    try {
      const account = await this.deps.store.accounts.add(user);
      this.deps.log.info({ clientIp: request.client.address, session: request.sessionId, user: account.username }, 'account added at its first page sign-in');
      return account;
    } catch (err) {
      const existing = await this.deps.store.accounts.find(user);
      if (existing) return existing;
      throw err;
    }
  }

  /** A completed page sign-in: the audit row the user sees under "Recent security activity". */
  private async signedIn(request: Pick<LoginRequest, 'client' | 'sessionId' | 'clientId'>, account: Account, how: string): Promise<void> {
    this.deps.events.login('web', 'ok');
    await this.deps.store.audit.record('web-sign-in', { username: account.username, ip: request.client.address, protocol: 'web', detail: how });
    this.deps.log.info({ clientIp: request.client.address, session: request.sessionId, user: account.username, how }, 'page sign-in');
  }

  private async afterUpstream(attempt: Attempt, decision: Extract<AuthDecision, { outcome: 'accept' }>, upstream: UpstreamLoginResult): Promise<LoginOutcome | PasswordOk> {
    const { request } = attempt;
    const user = decision.upstream.user;
    if (upstream.ok && request.channel === 'web') {
      this.deps.upstream.logout(upstream);
      return { kind: 'password-ok', account: decision.account, user };
    }
    if (upstream.ok) return this.loggedIn(attempt, decision, upstream);
    if (upstream.kind === 'rejected' && (upstream.code === 'IN-USE' || upstream.code === 'LOGIN-DELAY')) {
      // The credentials were right; the mailbox is busy. Not a failure to punish.
      this.deps.log.info({ clientIp: request.client.address, session: request.sessionId, user: clipName(user), protocol: request.channel, upstream: upstream.reason }, 'mailbox in use upstream');
      return { kind: 'in-use', code: upstream.code === 'LOGIN-DELAY' ? 'LOGIN-DELAY' : 'IN-USE' };
    }
    if (upstream.kind === 'rejected') {
      const refusal = { outcome: 'refuse', reason: 'upstream-rejected', username: user } as const;
      await this.deps.policy.rememberUpstreamRefusal(attempt.auth, refusal);
      return this.refuse(attempt, refusal, upstream.reason);
    }
    if (upstream.kind === 'no-such-account') {
      // The master login worked but the mail server has no such mailbox: the
      // user's problem to hear about as a failed login, the operator's to fix.
      this.deps.log.warn({ clientIp: request.client.address, session: request.sessionId, user: clipName(user), protocol: request.channel, upstream: upstream.reason }, 'the mail server does not know this account');
      return this.refuse(attempt, { outcome: 'refuse', reason: 'unknown-upstream-account', username: user }, upstream.reason);
    }
    this.deps.log.warn({ clientIp: request.client.address, session: request.sessionId, user: clipName(user), reason: upstream.reason }, 'upstream login failed');
    return this.temporary(attempt, { outcome: 'temporary', reason: 'upstream-unavailable', username: user });
  }

  /** Recorded before the client hears OK: a login the store cannot record does not get in. */
  private async loggedIn(attempt: Attempt, decision: Extract<AuthDecision, { outcome: 'accept' }>, upstream: LoggedIn): Promise<LoginOutcome> {
    const { request } = attempt;
    const appPassword = decision.mode === 'app-password' ? decision.appPassword : null;
    const user = decision.upstream.user;
    try {
      await this.deps.store.logins.recordSuccess({
        account: decision.account,
        appPassword,
        username: clipName(user),
        context: { protocol: request.channel, clientIp: request.client.address, client: attempt.auth.client },
      });
    } catch (err) {
      upstream.socket.destroy();
      // Answered like a refusal the store could not count, so neither the
      // answer nor its timing tells the password was right.
      this.deps.log.warn({ err: errorMessage(err) }, 'could not record the login in the store');
      return this.temporary(attempt, { outcome: 'temporary', reason: 'store-unavailable', username: user, detail: 'the login could not be recorded' });
    }
    if (request.signal.aborted) {
      upstream.socket.destroy();
      return { kind: 'abandoned' };
    }
    this.deps.events.login(request.channel, 'ok');
    return { kind: 'logged-in', mode: decision.mode, account: decision.account, appPassword, user, upstream };
  }

  /**
   * A credential failure: logged (fail2ban reads these lines), audited,
   * counted, then answered no sooner than a refusal decided elsewhere would
   * be (timing must not tell which accounts mailgate knows), plus the
   * penalty delay.
   */
  private async refuse(attempt: Attempt, decision: Extract<AuthDecision, { outcome: 'refuse' }>, upstreamText?: string): Promise<LoginOutcome> {
    const { request } = attempt;
    const fields = this.fields(attempt, decision.username, decision.reason, upstreamText);
    this.deps.events.login(request.channel, 'failed');
    // A repeat of a refusal goes to the summarised lines, and is not audited again.
    if (decision.repeat) this.deps.repeatedLines.write('info', 'login failed', `${decision.reason}\0${decision.username}`, { ...fields, repeat: true });
    else this.deps.log.info(fields, 'login failed');
    const source = decision.reason === 'upstream-rejected' || decision.reason === 'unknown-upstream-account' ? 'upstream' : 'local';
    let delayMs = this.deps.refusalTiming.settle(request.channel, source, Date.now() - attempt.startedAt);
    const counted = await this.count(attempt, decision);
    // If the failure could not be counted, still delay as for a first failure.
    delayMs += counted ?? this.deps.guard.delayFor(1);
    // A failure that could not be counted is answered as temporary, like the
    // logins refused meanwhile without a check (store.writable() above).
    if (counted === null) return { kind: 'temporary', reason: 'store-unavailable', delayMs, countsAsFailure: true };
    return { kind: 'refused', reason: decision.reason, delayMs };
  }

  /** Audit row and penalties; the penalty delay, or null when they could not be written. */
  private async count(attempt: Attempt, decision: Extract<AuthDecision, { outcome: 'refuse' }>): Promise<number | null> {
    const { request } = attempt;
    try {
      if (!decision.repeat) {
        await this.deps.store.logins.recordFailure(clipName(decision.username), decision.reason, { protocol: request.channel, clientIp: request.client.address });
      }
      return await this.deps.guard.recordFailure(attempt.clientKey, attempt.account, request.password);
    } catch (err) {
      // The store has noticed (writes failing: logins are refused until they work again).
      this.deps.log.warn({ err: errorMessage(err) }, 'could not record the login in the store');
      return null;
    }
  }

  /**
   * Every temporary answer waits the first-failure delay, so none stands
   * out from the others by its timing: the answer tells nothing about the
   * account or the password. Those a client can bring about at will
   * (blocked, hashing busy: refused without a check) also count as failed
   * logins on the connection; an outage of the store or the upstream does
   * not cut off the clients that wait it out.
   */
  private async temporary(attempt: Attempt, decision: Extract<AuthDecision, { outcome: 'temporary' }>): Promise<LoginOutcome> {
    const fields = this.fields(attempt, decision.username, decision.reason);
    this.deps.events.login(attempt.request.channel, decision.reason === 'blocked' ? 'blocked' : 'temporary');
    this.deps.repeatedLines.write('warn', 'login temporarily failed', decision.reason, { ...fields, ...(decision.detail ? { detail: decision.detail } : {}) });
    return { kind: 'temporary', reason: decision.reason, delayMs: this.deps.guard.delayFor(1), countsAsFailure: decision.reason === 'hash-busy' || decision.reason === 'blocked' };
  }

  /** A blocked client or account: refused without the password being looked at. */
  private async blocked(attempt: Attempt, blockedBy: 'ip' | 'account'): Promise<LoginOutcome> {
    const { request } = attempt;
    this.deps.events.login(request.channel, 'blocked');
    this.deps.repeatedLines.write('warn', 'login blocked', `${blockedBy}\0${request.username}`, {
      clientIp: request.client.address,
      session: request.sessionId,
      user: clipName(request.username),
      protocol: request.channel,
      blockedBy,
    });
    return { kind: 'temporary', reason: 'blocked', delayMs: this.deps.guard.delayFor(1), countsAsFailure: true };
  }

  private unavailable(attempt: Attempt, err: unknown): Promise<LoginOutcome> {
    return this.temporary(attempt, { outcome: 'temporary', reason: 'store-unavailable', username: attempt.request.username, detail: errorMessage(err) });
  }

  private attempt(request: LoginRequest): Attempt {
    return {
      request,
      auth: {
        username: request.username,
        authzid: request.authzid ?? '',
        password: request.password,
        protocol: request.channel,
        clientIp: request.client.address,
        client: request.clientId.name ? `${request.clientId.name}${request.clientId.version ? `/${request.clientId.version}` : ''}` : null,
      },
      account: this.deps.policy.penaltyAccount(request.username),
      clientKey: clientKey(request.client.address),
      startedAt: Date.now(),
    };
  }

  /** The fields of a failure line: stable names, fail2ban's filter keys on them. */
  private fields(attempt: Attempt, username: string, reason: string, upstreamText?: string): { clientIp: string } & Record<string, unknown> {
    const { request } = attempt;
    return {
      clientIp: request.client.address,
      clientPort: request.client.port,
      session: request.sessionId,
      protocol: request.channel,
      user: clipName(username),
      method: request.method,
      reason,
      ...(upstreamText ? { upstream: upstreamText } : {}),
    };
  }

  private origin(request: LoginRequest): ClientOrigin {
    return {
      clientIp: request.client.address,
      clientPort: request.client.port,
      localIp: request.local.address,
      localPort: request.local.port,
      sessionId: request.sessionId,
    };
  }
}

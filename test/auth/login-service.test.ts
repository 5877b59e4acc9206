/**
 * The login service on its own, without a socket: a real store (SQLite in a
 * temporary folder), the real policy, penalties, refusal timing and log
 * summaries, and an upstream that answers as told. Every outcome the
 * sessions (and the web page) can get, and what each leaves behind:
 * penalties counted once, the audit row, the metrics event, the log line,
 * and the delay served before the answer.
 */
import type { Socket } from 'node:net';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AbuseGuard, abuseRules } from '../../src/auth/abuse.js';
import { LoginCache } from '../../src/auth/login-cache.js';
import { LoginService, type LoginRequest } from '../../src/auth/login-service.js';
import { AuthPolicy } from '../../src/auth/policy.js';
import { RefusalTiming } from '../../src/auth/refusal-timing.js';
import { parseConfig } from '../../src/config/load.js';
import { createLogger } from '../../src/log/logger.js';
import { RepeatedLines } from '../../src/log/repeated-lines.js';
import type { UpstreamCredentials, UpstreamLoginResult } from '../../src/upstream/credentials.js';
import type { UpstreamLogin } from '../../src/upstream/upstreams.js';
import { enableTotp, makeTestStore, type TestStore } from '../support/store.js';

const WINDOW_MS = 600_000;

let t: TestStore;
let lines: Array<Record<string, unknown>>;
let events: string[];
let slept: number[];
let upstreamCalls: UpstreamCredentials[];
/** What the fake upstream answers next (default: the login works). */
let upstreamAnswer: (credentials: UpstreamCredentials) => UpstreamLoginResult;
let service: LoginService;
let guard: AbuseGuard;
let timing: RefusalTiming;

/** A stand-in for the upstream connection: the service only ever destroys it, never reads it. */
function fakeSocket(): Socket & { destroyed: boolean } {
  const socket = { destroyed: false, destroy: () => ((socket.destroyed = true), socket) };
  return socket as unknown as Socket & { destroyed: boolean };
}

function loggedIn(): UpstreamLoginResult {
  return { ok: true, socket: fakeSocket(), confirmation: 'mg3 OK Logged in', capabilities: ['IMAP4rev1'], leftover: Buffer.alloc(0) };
}

function build(overrides: Record<string, unknown> = {}): void {
  const config = parseConfig(
    {
      policy: { unknown_users: 'passthrough', ...(overrides.policy as object) },
      limits: { failure_delay_base_ms: 100, failure_delay_max_ms: 800, ip_block_after: 5, account_block_after: 8, ip_repeat_block_after: 4 },
    },
    'test',
  );
  const log = createLogger({ level: 'debug', destination: { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) } });
  const cache = new LoginCache({ ttlMs: 60_000, maxEntries: 100, negativeTtlMs: 60_000, negativeMaxEntries: 100 });
  const policy = new AuthPolicy(t.api, t.store.hasher, config, Buffer.from('master-secret'), { cache });
  guard = new AbuseGuard(t.api, abuseRules(config.limits), log);
  timing = new RefusalTiming(0, ['imap', 'pop3'], () => 0);
  const upstream: UpstreamLogin = {
    login: async (_protocol, credentials) => {
      upstreamCalls.push(credentials);
      return upstreamAnswer(credentials);
    },
    logout: (session) => void session.socket.destroy(),
  };
  service = new LoginService({
    store: t.api,
    policy,
    guard,
    refusalTiming: timing,
    upstream,
    events: { login: (channel, result) => events.push(`${channel}:${result}`) },
    log,
    repeatedLines: new RepeatedLines(log, 10_000, 3),
    sleep: async (ms) => void slept.push(ms),
  });
}

function request(username: string, password: string, more: Partial<LoginRequest> = {}): LoginRequest {
  return {
    channel: 'imap',
    username,
    password: Buffer.from(password),
    method: 'login',
    client: { address: '198.51.100.9', port: 50_000 },
    local: { address: '127.0.0.1', port: 993 },
    clientId: { name: 'Thunderbird', version: '153.0' },
    sessionId: 'S1',
    signal: new AbortController().signal,
    ...more,
  };
}

const penalties = (kind: 'ip' | 'account', key: string) => t.store.penalties.get(kind, key, WINDOW_MS);
const audit = (username: string) => t.store.audit.list({ username }).map((row) => `${row.event}:${row.detail ?? ''}`);
const failedLines = () => lines.filter((l) => l.msg === 'login failed');

beforeEach(async () => {
  t = await makeTestStore();
  lines = [];
  events = [];
  slept = [];
  upstreamCalls = [];
  upstreamAnswer = loggedIn;
  t.store.accounts.add('alice');
  t.store.accounts.add('tfa');
  enableTotp(t.store, 'tfa');
  build();
});
afterEach(() => t.cleanup());

describe('LoginService: logged in', () => {
  it('an app password: master login upstream, last use and audit recorded, counted as ok', async () => {
    const { password, info } = await t.store.appPasswords.create('tfa', { name: 'phone' });
    const outcome = await service.login(request('TFA', password));
    expect(outcome).toMatchObject({ kind: 'logged-in', mode: 'app-password', user: 'tfa', account: { username: 'tfa' }, appPassword: { id: info.id } });
    expect(upstreamCalls).toEqual([expect.objectContaining({ kind: 'master', user: 'tfa', masterUser: 'gwmaster' })]);
    expect(t.store.appPasswords.list('tfa')[0]!.lastUsed).toMatchObject({ ip: '198.51.100.9', protocol: 'imap', client: 'Thunderbird/153.0' });
    // The app password's first use from this address is also a new address (shown to its owner).
    expect(audit('tfa').slice(0, 2)).toEqual(['new-address:', 'login-ok:app-password']);
    expect(events).toEqual(['imap:ok']);
    expect(slept).toEqual([]);
  });

  it('a passthrough: the client\'s own credentials upstream, and an audit row even for a name mailgate does not know', async () => {
    const outcome = await service.login(request(' Nobody ', 'upstream-pw'));
    expect(outcome).toMatchObject({ kind: 'logged-in', mode: 'upstream-password', account: null, user: 'Nobody' });
    expect(upstreamCalls).toEqual([expect.objectContaining({ kind: 'passthrough', user: 'Nobody' })]);
    expect(audit('Nobody')).toEqual(['login-ok:upstream-password']);
  });

  it('a login the store cannot record does not get in: the upstream connection is closed, the answer temporary', async () => {
    const { password } = await t.store.appPasswords.create('tfa', { name: 'phone' });
    const socket = fakeSocket();
    upstreamAnswer = () => ({ ...(loggedIn() as Extract<UpstreamLoginResult, { ok: true }>), socket });
    t.store.db.exec("CREATE TEMP TRIGGER no_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit refused'); END");
    const outcome = await service.login(request('tfa', password));
    expect(outcome).toMatchObject({ kind: 'temporary', reason: 'store-unavailable', countsAsFailure: false });
    expect(socket.destroyed).toBe(true);
    // One commit: the last use was not written either.
    expect(t.store.appPasswords.list('tfa')[0]!.lastUsed).toBeNull();
    expect(slept).toEqual([guard.delayFor(1)]);
  });

  it('the client left while logging in upstream: abandoned, the upstream connection closed, nothing recorded', async () => {
    const controller = new AbortController();
    const socket = fakeSocket();
    upstreamAnswer = () => {
      controller.abort();
      return { ...(loggedIn() as Extract<UpstreamLoginResult, { ok: true }>), socket };
    };
    expect(await service.login(request('Nobody', 'pw', { signal: controller.signal }))).toEqual({ kind: 'abandoned' });
    expect(socket.destroyed).toBe(true);
    expect(audit('Nobody')).toEqual([]);
    expect(events).toEqual([]);
  });
});

describe('LoginService: refused', () => {
  it('a wrong password: logged, audited, counted once for the client and the account, answered after the penalty delay', async () => {
    const outcome = await service.login(request('tfa', 'not-the-password'));
    expect(outcome).toEqual({ kind: 'refused', reason: 'two-factor-required', delayMs: guard.delayFor(1) });
    expect(slept).toEqual([guard.delayFor(1)]);
    expect(failedLines()).toEqual([expect.objectContaining({ clientIp: '198.51.100.9', clientPort: 50_000, session: 'S1', protocol: 'imap', user: 'tfa', method: 'login', reason: 'two-factor-required' })]);
    expect(audit('tfa')[0]).toBe('login-failed:two-factor-required');
    expect(penalties('ip', '198.51.100.9').failures).toBe(1);
    expect(penalties('account', 'tfa').failures).toBe(1);
    expect(events).toEqual(['imap:failed']);
    expect(upstreamCalls).toEqual([]);
  });

  it('a second distinct failure waits the doubled delay', async () => {
    await service.login(request('tfa', 'first-guess'));
    const second = await service.login(request('tfa', 'second-guess'));
    expect(second).toMatchObject({ kind: 'refused', delayMs: guard.delayFor(2) });
  });

  it('the same attempt again: no second audit row, counted only as a repeat of the client, summarised in the log', async () => {
    await service.login(request('tfa', 'stale-password'));
    const again = await service.login(request('tfa', 'stale-password'));
    expect(again).toMatchObject({ kind: 'refused', reason: 'two-factor-required' });
    expect(audit('tfa').filter((a) => a.startsWith('login-failed'))).toHaveLength(1);
    expect(penalties('account', 'tfa')).toMatchObject({ failures: 1, repeats: 0 });
    expect(penalties('ip', '198.51.100.9')).toMatchObject({ failures: 1, repeats: 1 });
    expect(failedLines().at(-1)).toMatchObject({ repeat: true, reason: 'two-factor-required' });
  });

  it('the upstream says no (passthrough): refused with its words in the log only, and waits like a local refusal would', async () => {
    upstreamAnswer = () => ({ ok: false, kind: 'rejected', reason: 'mg4 NO [AUTHENTICATIONFAILED] Authentication failed.', code: 'AUTHENTICATIONFAILED' });
    timing.settle('imap', 'local', 300); // a local refusal took 300 ms: an upstream one must not look faster
    const outcome = await service.login(request('alice', 'wrong-main-password'));
    expect(outcome).toMatchObject({ kind: 'refused', reason: 'upstream-rejected' });
    if (outcome.kind === 'refused') expect(outcome.delayMs).toBeGreaterThanOrEqual(250 + guard.delayFor(1));
    expect(failedLines().at(-1)).toMatchObject({ reason: 'upstream-rejected', upstream: 'mg4 NO [AUTHENTICATIONFAILED] Authentication failed.' });
    expect(penalties('account', 'alice').failures).toBe(1);
    // The repeat is answered from memory: the upstream is not asked again.
    await service.login(request('alice', 'wrong-main-password'));
    expect(upstreamCalls).toHaveLength(1);
  });

  it('local refusals are held back as long as upstream ones take (refusal timing), plus the penalty', async () => {
    // Catches: a local refusal (one argon2 run) answered faster than an upstream one (Dovecot's
    // delay): the clock would tell accounts mailgate knows from the others.
    timing.settle('imap', 'upstream', 2_000);
    const outcome = await service.login(request('tfa', 'wrong-guess'));
    if (outcome.kind !== 'refused') throw new Error(`expected a refusal, got ${outcome.kind}`);
    expect(outcome.delayMs).toBeGreaterThanOrEqual(1_900 + guard.delayFor(1));
    expect(slept).toEqual([outcome.delayMs]);
  });

  it('the mail server does not know the account: an ordinary refusal, logged as such', async () => {
    const { password } = await t.store.appPasswords.create('tfa', { name: 'phone' });
    upstreamAnswer = () => ({ ok: false, kind: 'no-such-account', reason: 'mg4 NO [AUTHORIZATIONFAILED] Authorization failed', code: 'AUTHORIZATIONFAILED' });
    expect(await service.login(request('tfa', password))).toMatchObject({ kind: 'refused', reason: 'unknown-upstream-account' });
    expect(lines.some((l) => l.msg === 'the mail server does not know this account' && l.user === 'tfa')).toBe(true);
  });

  it("an authzid naming someone else: an ordinary refusal, counted against the authcid, even with the right password", async () => {
    const { password } = await t.store.appPasswords.create('tfa', { name: 'phone' });
    expect(await service.login(request('tfa', password, { authzid: 'alice' }))).toMatchObject({ kind: 'refused', reason: 'authzid-mismatch' });
    expect(penalties('account', 'tfa').failures).toBe(1);
    expect(penalties('account', 'alice').failures).toBe(0);
    expect(upstreamCalls).toEqual([]);
  });

  it('master-user syntax: refused, counted against the account it names, the upstream never asked', async () => {
    expect(await service.login(request('tfa*tfa', 'tfa-main-password'))).toMatchObject({ kind: 'refused', reason: 'master-user-syntax' });
    expect(penalties('account', 'tfa').failures).toBe(1);
    expect(upstreamCalls).toEqual([]);
  });

  it('a refusal the store cannot count is answered as temporary, after the first-failure delay', async () => {
    t.store.db.exec("CREATE TEMP TRIGGER no_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit refused'); END");
    expect(await service.login(request('tfa', 'guess'))).toMatchObject({ kind: 'temporary', reason: 'store-unavailable', countsAsFailure: true });
    expect(penalties('ip', '198.51.100.9').failures).toBe(0);
    expect(slept).toEqual([guard.delayFor(1)]);
  });
});

describe('LoginService: temporary', () => {
  it('a blocked client: refused without a password check, counted on the connection, the first-failure delay', async () => {
    for (let i = 0; i < 5; i++) await service.login(request('tfa', `guess-${i}`, { channel: 'pop3' }));
    const before = t.store.hasher.stats.verifications;
    slept = [];
    const outcome = await service.login(request('tfa', 'anything'));
    expect(outcome).toEqual({ kind: 'temporary', reason: 'blocked', delayMs: guard.delayFor(1), countsAsFailure: true });
    expect(t.store.hasher.stats.verifications).toBe(before);
    expect(slept).toEqual([guard.delayFor(1)]);
    expect(events.at(-1)).toBe('imap:blocked');
    expect(lines.at(-1)).toMatchObject({ msg: 'login blocked', blockedBy: 'ip', clientIp: '198.51.100.9' });
  });

  it('the hasher full: temporary for every kind of account, counted on the connection', async () => {
    const full = vi.spyOn(t.store.hasher, 'hasCapacity').mockReturnValue(false);
    try {
      for (const name of ['ghost', 'tfa', 'alice']) {
        expect(await service.login(request(name, 'x')), name).toMatchObject({ kind: 'temporary', reason: 'hash-busy', countsAsFailure: true });
      }
    } finally {
      full.mockRestore();
    }
    expect(upstreamCalls).toEqual([]);
  });

  it('the store cannot be written: no password is checked; not counted against the connection', async () => {
    const writable = vi.spyOn(t.api, 'writable').mockRejectedValue(new Error('database is locked'));
    try {
      const before = t.store.hasher.stats.verifications;
      expect(await service.login(request('tfa', 'guess'))).toMatchObject({ kind: 'temporary', reason: 'store-unavailable', countsAsFailure: false });
      expect(t.store.hasher.stats.verifications).toBe(before);
    } finally {
      writable.mockRestore();
    }
    expect(lines.at(-1)).toMatchObject({ msg: 'login temporarily failed', reason: 'store-unavailable', detail: 'database is locked' });
  });

  it('the upstream down: temporary, the reason in the log, nothing counted', async () => {
    upstreamAnswer = () => ({ ok: false, kind: 'unavailable', reason: 'cannot connect to 127.0.0.1:143: connect ECONNREFUSED', code: null });
    expect(await service.login(request('alice', 'main-password'))).toMatchObject({ kind: 'temporary', reason: 'upstream-unavailable', countsAsFailure: false });
    expect(lines.some((l) => l.msg === 'upstream login failed' && String(l.reason).includes('ECONNREFUSED'))).toBe(true);
    expect(penalties('ip', '198.51.100.9').failures).toBe(0);
    expect(events).toEqual(['imap:temporary']);
  });

  it('the mailbox in use: in-use, not a failure', async () => {
    upstreamAnswer = () => ({ ok: false, kind: 'rejected', reason: '-ERR [IN-USE] locked', code: 'IN-USE' });
    expect(await service.login(request('alice', 'main-password', { channel: 'pop3' }))).toEqual({ kind: 'in-use', code: 'IN-USE' });
    expect(penalties('ip', '198.51.100.9').failures).toBe(0);
    expect(slept).toEqual([]);
  });
});

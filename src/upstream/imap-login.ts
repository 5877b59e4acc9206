/**
 * Logging in to the upstream IMAP server for a client, modelled on Dovecot's
 * imap-proxy: read the greeting and capabilities, STARTTLS if configured,
 * forward the client's address with ID, log in, and hand back the socket with
 * the post-login capabilities.
 *
 * Every way the upstream can misbehave before credentials are sent (no
 * STARTTLS offered, STARTTLS refused, bytes injected after the STARTTLS OK, a
 * PREAUTH greeting) aborts the login; credentials never go out in clear text
 * to a server that says LOGINDISABLED.
 */
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import { encodeCommand, encodeIdCommand, type CommandArg } from '../protocols/imap/compiler.js';
import { encodeBase64 } from '../protocols/sasl.js';
import { upgradeUpstream, UpstreamError, type UpstreamTarget } from './connect.js';
import { loginPair, saslPlainMessage, type ClientOrigin, type UpstreamCredentials, type UpstreamLoginResult } from './credentials.js';
import { runLoginDialogue, UpstreamDialogue, UpstreamNoSuchAccount, UpstreamRejected } from './dialogue.js';

export interface ImapLoginRequest {
  target: UpstreamTarget;
  connectTimeoutMs: number;
  responseTimeoutMs: number;
  /** Send ID with the client's address (Dovecot login_trusted_networks). */
  forward: ClientOrigin | null;
  credentials: UpstreamCredentials;
  /** Fires when the client hangs up: the dialogue stops and the connection is closed. */
  clientLeft?: AbortSignal;
  /** Learns the upstream's pre-login capabilities, for the gateway's own greeting. */
  onGreetingCapabilities?: (capabilities: string[]) => void;
}

interface TaggedResponse {
  status: 'OK' | 'NO' | 'BAD';
  code: string | null;
  line: string;
  /** Capabilities from untagged CAPABILITY lines or the response code. */
  capabilities: string[] | null;
}

const RESP_CODE = /^\[([^\]]*)\]/;

function responseCode(text: string): string | null {
  const match = RESP_CODE.exec(text);
  return match ? match[1]! : null;
}

function capabilitiesFromCode(code: string | null): string[] | null {
  if (!code || !/^CAPABILITY /i.test(code)) return null;
  return code.split(' ').slice(1).filter(Boolean);
}

function hasCapability(capabilities: readonly string[], name: string): boolean {
  return capabilities.some((c) => c.toUpperCase() === name);
}

class ImapUpstreamDialogue extends UpstreamDialogue {
  private tagCounter = 0;
  private secure: boolean;

  constructor(
    socket: Socket,
    private readonly request: ImapLoginRequest,
  ) {
    super(socket, request.responseTimeoutMs);
    this.secure = socket instanceof TLSSocket;
  }

  async run(): Promise<UpstreamLoginResult> {
    let capabilities = await this.readGreeting();
    if (this.request.target.tls === 'starttls') capabilities = await this.startTls(capabilities);
    capabilities ??= await this.capability();
    this.request.onGreetingCapabilities?.(capabilities);
    if (this.request.forward && hasCapability(capabilities, 'ID')) await this.sendId(this.request.forward);
    const response = await this.login(capabilities);
    const after = response.capabilities ?? (await this.capability());
    return { ok: true, socket: this.socket, confirmation: response.line, capabilities: after, leftover: this.reader.detach() };
  }

  private async readGreeting(): Promise<string[] | null> {
    const line = await this.reader.readLine();
    if (/^\* PREAUTH\b/i.test(line)) throw new UpstreamError('the upstream greeted with PREAUTH; refusing a session that skips authentication');
    if (/^\* BYE\b/i.test(line)) throw new UpstreamError(`the upstream refused the connection: ${line.slice(0, 200)}`);
    if (!/^\* OK\b/i.test(line)) throw new UpstreamError(`unexpected upstream greeting: ${line.slice(0, 200)}`);
    return capabilitiesFromCode(responseCode(line.slice(5)));
  }

  private async startTls(known: string[] | null): Promise<string[]> {
    const capabilities = known ?? (await this.capability());
    if (!hasCapability(capabilities, 'STARTTLS')) {
      throw new UpstreamError('the upstream does not offer STARTTLS, but tls = "starttls" is configured');
    }
    const response = await this.command('STARTTLS', []);
    if (response.status !== 'OK') throw new UpstreamError(`the upstream refused STARTTLS: ${response.line.slice(0, 200)}`);
    // Anything after the OK arrived in clear text before the handshake and
    // could only be an injection (CVE-2011-0411 class): abort rather than read it.
    if (this.reader.pendingBytes > 0) throw new UpstreamError('the upstream sent data after its STARTTLS OK (possible injection)');
    this.switchTo(await upgradeUpstream(this.socket, this.request.target, this.request.connectTimeoutMs));
    this.secure = true;
    // Capabilities before TLS cannot be trusted; ask again (RFC 3501 6.2.1).
    return this.capability();
  }

  private async capability(): Promise<string[]> {
    const response = await this.command('CAPABILITY', []);
    if (response.status !== 'OK' || !response.capabilities) {
      throw new UpstreamError(`the upstream did not list its capabilities: ${response.line.slice(0, 200)}`);
    }
    return response.capabilities;
  }

  private async sendId(origin: ClientOrigin): Promise<void> {
    const tag = this.nextTag();
    await this.write(encodeIdCommand(tag, [
      ['x-originating-ip', origin.clientIp],
      ['x-originating-port', String(origin.clientPort)],
      ['x-connected-ip', origin.localIp],
      ['x-connected-port', String(origin.localPort)],
      ['x-session-ext-id', origin.sessionId],
    ]).segments[0]!);
    // The answer does not matter: an upstream that ignores the fields still works.
    await this.readTagged(tag);
  }

  private async login(capabilities: string[]): Promise<TaggedResponse> {
    if (!this.secure && hasCapability(capabilities, 'LOGINDISABLED')) {
      throw new UpstreamError('the upstream says LOGINDISABLED on an unencrypted connection; configure tls = "starttls" or "implicit"');
    }
    const credentials = this.request.credentials;
    const useSasl =
      (credentials.kind === 'master' && credentials.style === 'authzid') ||
      (credentials.kind === 'passthrough' && hasCapability(capabilities, 'AUTH=PLAIN'));
    const response = useSasl ? await this.authenticatePlain(capabilities) : await this.loginCommand(capabilities);
    if (response.status === 'OK') return response;
    const text = response.line.slice(0, 200);
    const code = (response.code ?? '').split(' ')[0]!.toUpperCase();
    // A mailbox in use is the user's state: reported as such whoever logged in.
    if (response.status === 'NO' && code === 'INUSE') throw new UpstreamRejected(text, 'IN-USE');
    // RFC 5530: the server's own trouble, not the credentials': temporary, never a penalty.
    const temporary = code === 'UNAVAILABLE' || code === 'SERVERBUG' || code === 'LIMIT';
    if (credentials.kind === 'passthrough' && response.status === 'NO' && !temporary) throw new UpstreamRejected(text, response.code);
    // RFC 5530: the master user was authenticated but may not act as this user (Dovecot: no such user).
    if (credentials.kind === 'master' && response.status === 'NO' && code === 'AUTHORIZATIONFAILED') throw new UpstreamNoSuchAccount(text, response.code);
    throw new UpstreamError(
      credentials.kind === 'master' ? `the upstream refused the master login: ${text}` : `the upstream refused the login: ${text}`,
    );
  }

  private async authenticatePlain(capabilities: string[]): Promise<TaggedResponse> {
    const message = saslPlainMessage(this.request.credentials);
    if (!message) throw new UpstreamError('the credentials contain NUL and cannot be sent');
    const encoded = encodeBase64(message);
    message.fill(0);
    const tag = this.nextTag();
    if (hasCapability(capabilities, 'SASL-IR')) {
      await this.write(Buffer.from(`${tag} AUTHENTICATE PLAIN ${encoded}\r\n`, 'latin1'));
      return this.readTagged(tag);
    }
    await this.write(Buffer.from(`${tag} AUTHENTICATE PLAIN\r\n`, 'latin1'));
    const early = await this.readContinuation(tag);
    if (early) return early;
    await this.write(Buffer.from(`${encoded}\r\n`, 'latin1'));
    return this.readTagged(tag);
  }

  private async loginCommand(capabilities: string[]): Promise<TaggedResponse> {
    const { user, password } = loginPair(this.request.credentials);
    return this.command('LOGIN', [user, password], hasCapability(capabilities, 'LITERAL+'));
  }

  /** Sends a command, waiting for "+" between literal segments, and reads its tagged response. */
  private async command(name: string, args: CommandArg[], literalPlus = false): Promise<TaggedResponse> {
    const tag = this.nextTag();
    const encoded = encodeCommand(tag, name, args, { literalPlus });
    if ('error' in encoded) throw new UpstreamError('the credentials contain NUL and cannot be sent');
    const [first, ...rest] = encoded.segments;
    await this.write(first!);
    for (const segment of rest) {
      const early = await this.readContinuation(tag);
      if (early) return early;
      await this.write(segment);
    }
    return this.readTagged(tag);
  }

  /** Waits for "+"; returns the tagged response instead if the server ended the command early. */
  private async readContinuation(tag: string): Promise<TaggedResponse | null> {
    for (;;) {
      const line = await this.reader.readLine();
      if (line.startsWith('+')) return null;
      if (line.startsWith(`${tag} `)) return this.parseTagged(line, tag, null);
      // Untagged data while waiting is allowed and ignored.
    }
  }

  private async readTagged(tag: string): Promise<TaggedResponse> {
    let capabilities: string[] | null = null;
    for (;;) {
      const line = await this.reader.readLine();
      if (line.startsWith(`${tag} `)) return this.parseTagged(line, tag, capabilities);
      const untaggedCaps = /^\* CAPABILITY (.*)$/i.exec(line);
      if (untaggedCaps) capabilities = untaggedCaps[1]!.split(' ').filter(Boolean);
      else if (/^\* BYE\b/i.test(line)) throw new UpstreamError(`the upstream closed the session: ${line.slice(0, 200)}`);
      else if (line.startsWith('+')) throw new UpstreamError('the upstream sent an unexpected continuation');
    }
  }

  private parseTagged(line: string, tag: string, untaggedCaps: string[] | null): TaggedResponse {
    const rest = line.slice(tag.length + 1);
    const match = /^(OK|NO|BAD)\b ?(.*)$/i.exec(rest);
    if (!match) throw new UpstreamError(`malformed upstream response: ${line.slice(0, 200)}`);
    const code = responseCode(match[2]!);
    return {
      status: match[1]!.toUpperCase() as TaggedResponse['status'],
      code,
      line,
      capabilities: capabilitiesFromCode(code) ?? untaggedCaps,
    };
  }

  private nextTag(): string {
    // Private tags: they never collide with, or get confused for, the client's.
    this.tagCounter += 1;
    return `mg${this.tagCounter}`;
  }
}

export function loginImapUpstream(request: ImapLoginRequest): Promise<UpstreamLoginResult> {
  return runLoginDialogue(request.target, request.connectTimeoutMs, (socket) => new ImapUpstreamDialogue(socket, request), request.clientLeft);
}

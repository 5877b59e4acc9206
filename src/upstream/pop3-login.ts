/**
 * Logging in to the upstream POP3 server for a client: greeting, CAPA, STLS
 * if configured, XCLIENT with the client's address, then AUTH PLAIN or
 * USER/PASS. The same refusals as the IMAP side: no STLS offered, STLS
 * refused, or bytes injected after the STLS answer abort the login.
 */
import type { Socket } from 'node:net';
import { encodeCommand, encodeUser } from '../protocols/pop3/compiler.js';
import { encodeBase64 } from '../protocols/sasl.js';
import { upgradeUpstream, UpstreamError } from './connect.js';
import { loginPair, saslPlainMessage, type UpstreamLoginResult } from './credentials.js';
import type { ImapLoginRequest } from './imap-login.js';
import { runLoginDialogue, UpstreamDialogue, UpstreamNoSuchAccount, UpstreamRejected } from './dialogue.js';

export type Pop3LoginRequest = Omit<ImapLoginRequest, 'onGreetingCapabilities'> & {
  onCapabilities?: (capabilities: string[]) => void;
};

interface Reply {
  ok: boolean;
  line: string;
  code: string | null;
}

function hasCapability(capabilities: readonly string[], keyword: string, argument?: string): boolean {
  return capabilities.some((line) => {
    const [name, ...args] = line.split(' ');
    if (name!.toUpperCase() !== keyword) return false;
    return argument === undefined || args.some((a) => a.toUpperCase() === argument);
  });
}

class Pop3UpstreamDialogue extends UpstreamDialogue {
  constructor(
    socket: Socket,
    private readonly request: Pop3LoginRequest,
  ) {
    super(socket, request.responseTimeoutMs);
  }

  async run(): Promise<UpstreamLoginResult> {
    const greeting = await this.readReply();
    if (!greeting.ok) throw new UpstreamError(`the upstream refused the connection: ${greeting.line.slice(0, 200)}`);
    let capabilities = await this.capa();
    if (this.request.target.tls === 'starttls') capabilities = await this.startTls(capabilities);
    this.request.onCapabilities?.(capabilities);
    // Dovecot offers XCLIENT in its greeting ("+OK [XCLIENT] ..."), not in CAPA.
    const xclient = /^\+OK \[XCLIENT\]/i.test(greeting.line) || hasCapability(capabilities, 'XCLIENT');
    if (this.request.forward && xclient) await this.xclient();
    const reply = await this.login(capabilities);
    return { ok: true, socket: this.socket, confirmation: reply.line, capabilities, leftover: this.reader.detach() };
  }

  private async capa(): Promise<string[]> {
    await this.write(Buffer.from('CAPA\r\n'));
    const reply = await this.readReply();
    // CAPA is optional (RFC 2449); a server without it simply has no extensions.
    if (!reply.ok) return [];
    const lines: string[] = [];
    for (;;) {
      const line = await this.reader.readLine();
      if (line === '.') return lines;
      lines.push(line.startsWith('..') ? line.slice(1) : line);
    }
  }

  private async startTls(capabilities: string[]): Promise<string[]> {
    if (!hasCapability(capabilities, 'STLS')) {
      throw new UpstreamError('the upstream does not offer STLS, but tls = "starttls" is configured');
    }
    await this.write(Buffer.from('STLS\r\n'));
    const reply = await this.readReply();
    if (!reply.ok) throw new UpstreamError(`the upstream refused STLS: ${reply.line.slice(0, 200)}`);
    if (this.reader.pendingBytes > 0) throw new UpstreamError('the upstream sent data after its STLS answer (possible injection)');
    this.switchTo(await upgradeUpstream(this.socket, this.request.target, this.request.connectTimeoutMs));
    return this.capa();
  }

  private async xclient(): Promise<void> {
    const origin = this.request.forward!;
    const args = `ADDR=${origin.clientIp} PORT=${origin.clientPort} SESSION=${origin.sessionId}`;
    // Values come from the socket and our own id generator, but check anyway:
    // XCLIENT has no quoting.
    if (!/^[A-Za-z0-9=.:_\- ]+$/.test(args)) throw new UpstreamError('client address unsuitable for XCLIENT');
    await this.write(Buffer.from(`XCLIENT ${args}\r\n`, 'latin1'));
    // As with IMAP ID, a refusal only costs the forwarded address.
    await this.readReply();
  }

  private async login(capabilities: string[]): Promise<Reply> {
    const credentials = this.request.credentials;
    const saslPlain = hasCapability(capabilities, 'SASL', 'PLAIN');
    const useSasl = (credentials.kind === 'master' && credentials.style === 'authzid') || (credentials.kind === 'passthrough' && saslPlain);
    const reply = useSasl ? await this.authPlain() : await this.userPass();
    if (reply.ok) return reply;
    const text = reply.line.slice(0, 200);
    // A locked mailbox is the user's state: reported as such whoever logged in.
    if (reply.code === 'IN-USE' || reply.code === 'LOGIN-DELAY') throw new UpstreamRejected(text, reply.code);
    // RFC 3206: SYS/TEMP and SYS/PERM are the server's trouble, not the
    // credentials': unavailable, never counted against the user.
    const serverTrouble = reply.code === 'SYS/TEMP' || reply.code === 'SYS/PERM';
    if (credentials.kind === 'passthrough' && !serverTrouble) throw new UpstreamRejected(text, reply.code);
    // POP3 has no code for it: Dovecot says "Authorization failed" when the master user may not act as
    // the account (no such user), "Authentication failed" when the master password is wrong.
    if (credentials.kind === 'master' && reply.code === 'AUTH' && /\bAuthorization failed\b/i.test(text)) throw new UpstreamNoSuchAccount(text, reply.code);
    throw new UpstreamError(`the upstream refused the ${credentials.kind === 'master' ? 'master ' : ''}login: ${text}`);
  }

  private async authPlain(): Promise<Reply> {
    const message = saslPlainMessage(this.request.credentials);
    if (!message) throw new UpstreamError('the credentials contain NUL and cannot be sent');
    const encoded = encodeBase64(message);
    message.fill(0);
    // Initial response in the AUTH line (RFC 5034); 255 octets is the command
    // limit, so longer credentials go in a continuation instead.
    const line = `AUTH PLAIN ${encoded}\r\n`;
    if (line.length <= 255) {
      await this.write(Buffer.from(line, 'latin1'));
      return this.readReply();
    }
    await this.write(Buffer.from('AUTH PLAIN\r\n', 'latin1'));
    const first = await this.reader.readLine();
    if (!first.startsWith('+')) return this.toReply(first);
    await this.write(Buffer.from(`${encoded}\r\n`, 'latin1'));
    return this.readReply();
  }

  private async userPass(): Promise<Reply> {
    const { user, password } = loginPair(this.request.credentials);
    const userLine = encodeUser(user);
    const passLine = encodeCommand('PASS', password);
    if (!Buffer.isBuffer(userLine) || !Buffer.isBuffer(passLine)) {
      // The client's own odd credentials are refused; a master password that
      // cannot be sent is a configuration problem, not the user's.
      if (this.request.credentials.kind === 'master') throw new UpstreamError('the master credentials cannot be expressed in a POP3 USER/PASS command');
      throw new UpstreamRejected('the credentials cannot be expressed in a POP3 USER/PASS command', null);
    }
    await this.write(userLine);
    const userReply = await this.readReply();
    if (!userReply.ok) return userReply;
    await this.write(passLine);
    return this.readReply();
  }

  private async readReply(): Promise<Reply> {
    return this.toReply(await this.reader.readLine());
  }

  private toReply(line: string): Reply {
    if (line.startsWith('+OK')) return { ok: true, line, code: null };
    if (line.startsWith('-ERR')) {
      const code = /^-ERR \[([^\]]*)\]/.exec(line);
      return { ok: false, line, code: code ? code[1]!.toUpperCase() : null };
    }
    throw new UpstreamError(`malformed upstream response: ${line.slice(0, 200)}`);
  }
}

export function loginPop3Upstream(request: Pop3LoginRequest): Promise<UpstreamLoginResult> {
  return runLoginDialogue(request.target, request.connectTimeoutMs, (socket) => new Pop3UpstreamDialogue(socket, request), request.clientLeft);
}

/**
 * IMAP on top of the raw client: a tagged command and its whole answer, with
 * literals read whole (so a FETCH of a 20 MiB message is one piece, and bytes
 * inside a literal are never taken for a tagged line), and the few IMAP
 * strings tests compare answers with.
 */
import type { GatewayHandle } from './gateway.js';
import { RawClient, type ConnectAs } from './raw-client.js';

const LITERAL_AT_END = /\{(\d+)\+?\}\r\n$/;

export class ImapClient extends RawClient {
  /** Sends `tag command` and returns the whole answer, up to and including its tagged line. */
  command(tag: string, command: string, timeoutMs?: number): Promise<string> {
    this.send(`${tag} ${command}\r\n`);
    return this.readUntilTagged(tag, timeoutMs);
  }

  /** Everything up to and including the line tagged `tag`; literals announced at the end of a line are read whole. */
  async readUntilTagged(tag: string, timeoutMs = this.timeoutMs): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    const left = () => Math.max(1, deadline - Date.now());
    let out = '';
    for (;;) {
      const line = await this.readLine(left());
      out += line;
      if (line.startsWith(`${tag} `)) return out;
      const literal = LITERAL_AT_END.exec(line);
      if (literal) out += (await this.readBytes(Number(literal[1]), left())).toString('latin1');
    }
  }

  /**
   * Sends `tag command` (a FETCH of one message body) and returns the bytes of
   * the first literal in its answer; fails unless the answer ends with `tag OK`.
   */
  async fetchLiteral(taggedCommand: string, timeoutMs?: number): Promise<Buffer> {
    const tag = taggedCommand.split(' ')[0]!;
    this.send(`${taggedCommand}\r\n`);
    let literal: Buffer | null = null;
    for (;;) {
      const line = await this.readLine(timeoutMs);
      if (line.startsWith(`${tag} `)) {
        if (!line.startsWith(`${tag} OK`)) throw new Error(`ImapClient: ${taggedCommand} failed: ${line}`);
        if (!literal) throw new Error(`ImapClient: no literal in the answer to ${taggedCommand}`);
        return literal;
      }
      const m = LITERAL_AT_END.exec(line);
      if (m) {
        const data = await this.readBytes(Number(m[1]), timeoutMs);
        literal ??= data;
      }
    }
  }
}

/** A connection to the gateway's IMAPS (implicit TLS) listener, its greeting read. */
export async function imaps(gw: Pick<GatewayHandle, 'ports' | 'caCert'>, as: ConnectAs = {}): Promise<ImapClient> {
  const { client } = await ImapClient.open({ port: gw.ports.imaps, tls: true, ca: gw.caCert, localAddress: as.from, timeoutMs: as.timeoutMs });
  return client;
}

/** An IMAP string argument that is always safe to send quoted. */
export function imapQuote(text: string): string {
  return `"${text.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

/** The tagged line of an IMAP answer, without its CRLF ('' if there is none). */
export function taggedLine(answer: string, tag: string): string {
  return answer.split('\r\n').find((l) => l.startsWith(`${tag} `)) ?? '';
}

/** The one answer every credential failure gets: the ALERT line, then the tagged NO. */
export function credentialFailure(tag: string, helpUrl: string): string {
  return (
    `* NO [ALERT] Sign-in failed. If your account has 2-step verification, sign in with an app password, not your account password: ${helpUrl}\r\n` +
    `${tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n`
  );
}

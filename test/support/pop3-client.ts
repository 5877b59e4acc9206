/**
 * POP3 on top of the raw client: a command line and its one-line answer, a
 * multi-line answer verbatim, QUIT. Tests still write whatever bytes they
 * want (several commands in one write to pipeline or inject) with send().
 */
import type { GatewayHandle } from './gateway.js';
import { RawClient, type ConnectAs } from './raw-client.js';

export class Pop3Client extends RawClient {
  /** Sends one command line (CRLF added) and reads one response line. */
  command(line: string, timeoutMs?: number): Promise<string> {
    this.send(`${line}\r\n`);
    return this.readLine(timeoutMs);
  }

  /** A status line and, when it is +OK, the multi-line body up to and including ".\r\n"; returned verbatim. */
  async readMultiline(timeoutMs = this.timeoutMs): Promise<string> {
    const first = await this.readLine(timeoutMs);
    return first.startsWith('+OK') ? first + (await this.readUntil(/^\.\r\n$/, timeoutMs)) : first;
  }

  /** Polite end: QUIT, its answer, then the server's close. */
  async quit(): Promise<string> {
    const answer = await this.command('QUIT');
    await this.waitClosed();
    return answer;
  }
}

/** A connection to the gateway's POP3S (implicit TLS) listener, its greeting read. */
export async function pop3s(gw: Pick<GatewayHandle, 'ports' | 'caCert'>, as: ConnectAs = {}): Promise<Pop3Client> {
  const { client } = await Pop3Client.open({ port: gw.ports.pop3s, tls: true, ca: gw.caCert, localAddress: as.from, timeoutMs: as.timeoutMs });
  return client;
}

/** The lines of a multi-line answer between the status line and ".", without CRLF or dot-stuffing. */
export function multilineBody(block: string): string[] {
  const lines = block.split('\r\n');
  // status line first, then body lines, then "." and the empty string after the last CRLF
  if (lines[lines.length - 1] !== '' || lines[lines.length - 2] !== '.') throw new Error(`not a complete multi-line answer: ${JSON.stringify(block)}`);
  return lines.slice(1, -2).map((l) => (l.startsWith('..') ? l.slice(1) : l));
}

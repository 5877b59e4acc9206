/**
 * Real clients (curl, ImapFlow) set up the one way the integration tests use
 * them: to 127.0.0.1, the server certificate verified as 'localhost' against
 * the test CA. Python's imaplib/poplib: python.ts; fetchmail: fetchmail.ts.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { ImapFlow, type ImapFlowOptions } from 'imapflow';
import { sleep } from './timing.js';

const execFileP = promisify(execFile);

export interface CurlLogin {
  ca: string;
  user: string;
  password: string;
  /** HOME for curl, so that no ~/.curlrc of the machine's user applies. */
  home: string;
  /** --ssl-reqd: STARTTLS/STLS required, for imap:// and pop3:// URLs. */
  sslReqd?: boolean;
}

/** What curl fetches from `url` (on localhost:PORT, resolved to 127.0.0.1), as bytes; rejects if curl fails. */
export async function curlFetch(url: string, login: CurlLogin): Promise<Buffer> {
  const { stdout } = await execFileP(
    'curl',
    [
      '--silent', '--show-error', '--max-time', '10',
      ...(login.sslReqd ? ['--ssl-reqd'] : []),
      '--cacert', login.ca,
      '--resolve', `localhost:${new URL(url).port}:127.0.0.1`,
      '--user', `${login.user}:${login.password}`,
      url,
    ],
    { encoding: 'buffer', env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: login.home } },
  );
  return stdout;
}

/** An ImapFlow client, not connected yet: implicit TLS unless `extra` says otherwise (e.g. { secure: false, doSTARTTLS: true }). */
export function imapFlow(port: number, ca: string, auth: { user: string; pass: string }, extra: Partial<ImapFlowOptions> = {}): ImapFlow {
  return new ImapFlow({
    host: '127.0.0.1',
    port,
    secure: true,
    tls: { ca: [readFileSync(ca, 'utf8')], servername: 'localhost', rejectUnauthorized: true },
    auth,
    logger: false,
    ...extra,
  });
}

/**
 * Connects `client`, opens INBOX and sits in IDLE while `deliver` runs; waits
 * (5 s at most) for the EXISTS that follows, ends IDLE, fetches the newest
 * message and logs out. Returns the message counts before and after, and the
 * newest message's bytes.
 */
export async function idleUntilDelivered(client: ImapFlow, deliver: () => Promise<unknown>): Promise<{ before: number; after: number; newest: Buffer | undefined }> {
  await client.connect();
  try {
    const lock = await client.getMailboxLock('INBOX');
    try {
      const before = (client.mailbox as { exists: number }).exists;
      const seen = new Promise<number>((resolve) => client.on('exists', (d: { count: number }) => resolve(d.count)));
      // Enter IDLE explicitly; ImapFlow would otherwise only IDLE after its own delay.
      const idling = client.idle();
      await sleep(150);
      await deliver();
      const after = await Promise.race([seen, new Promise<never>((_, reject) => setTimeout(() => reject(new Error('no EXISTS within 5 s')), 5_000))]);
      await client.noop(); // ends IDLE
      await idling.catch(() => undefined);
      const msg = await client.fetchOne('*', { source: true }, { uid: false });
      return { before, after, newest: msg ? msg.source : undefined };
    } finally {
      lock.release();
    }
  } finally {
    await client.logout().catch(() => client.close());
  }
}

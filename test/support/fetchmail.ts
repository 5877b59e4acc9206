/**
 * Runs the real fetchmail (Debian package; scripts/install-test-deps.sh
 * installs it) once, in the foreground, against a POP3 server on loopback.
 *
 * Everything lives in a private temp dir: HOME (so ~/.fetchmailrc and
 * ~/.fetchids of the machine are neither read nor written), the rc file
 * (mode 0600: fetchmail refuses group/world-readable ones), the idfile, and a
 * `mail/` folder where a tiny MDA writes each delivered message as one file,
 * numbered in delivery order.
 */
import { execFile } from 'node:child_process';
import { chmod, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { makeTempDir, removeTempDir } from './tmp.js';

export interface FetchmailOptions {
  port: number;
  user: string;
  password: string;
  /** CA file that must have signed the server certificate (sslcertck + sslcertfile). */
  ca: string;
  /** 'implicit': POP3S (ssl); 'stls': plain connect, STLS required. */
  tls: 'implicit' | 'stls';
  /** Leave the messages on the server (default false: fetch and delete). */
  keep?: boolean;
  timeoutMs?: number;
}

export interface FetchmailResult {
  code: number | null;
  stdout: string;
  stderr: string;
  /** Delivered messages, in delivery order, exactly as the MDA received them. */
  messages: Buffer[];
}

export const FETCHMAIL = '/usr/bin/fetchmail';

function quote(value: string): string {
  if (/["\\\r\n]/.test(value)) throw new Error('fetchmail rc values must not contain quotes, backslashes or newlines');
  return `"${value}"`;
}

export async function runFetchmail(options: FetchmailOptions): Promise<FetchmailResult> {
  const dir = await makeTempDir('fm');
  try {
    const mailDir = path.join(dir, 'mail');
    await mkdir(mailDir, { mode: 0o700 });
    // Each delivery gets the next number: messages stay in delivery order.
    const mda = path.join(dir, 'mda.sh');
    await writeFile(
      mda,
      ['#!/bin/sh', 'set -e', `dir=${mailDir}`, 'n=$(ls "$dir" | wc -l)', 'cat > "$dir/$(printf %04d "$n").eml"', ''].join('\n'),
      { mode: 0o700 },
    );
    const rc = path.join(dir, 'fetchmailrc');
    const lines = [
      'set no syslog',
      'set no bouncemail',
      `set idfile ${quote(path.join(dir, 'fetchids'))}`,
      // The certificate names localhost (and 127.0.0.1); connect to the IPv4 loopback only.
      `poll localhost via 127.0.0.1 with proto POP3 port ${options.port} timeout 15`,
      `  user ${quote(options.user)} there with password ${quote(options.password)} is ${quote('root')} here`,
      `  ${options.tls === 'implicit' ? 'ssl ' : ''}sslproto ${quote('TLS1.2+')} sslcertck sslcertfile ${quote(options.ca)} sslcommonname ${quote('localhost')}`,
      `  ${options.keep ? 'keep' : 'no keep'} fetchall no rewrite`,
      `  mda ${quote(mda)}`,
      '',
    ];
    await writeFile(rc, lines.join('\n'), { mode: 0o600 });
    await chmod(rc, 0o600);
    const result = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      execFile(
        FETCHMAIL,
        ['--nodetach', '-f', rc, '--pidfile', path.join(dir, 'fetchmail.pid'), '-v'],
        {
          env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: dir, LANG: 'C', FETCHMAILHOME: dir },
          timeout: options.timeoutMs ?? 20_000,
        },
        (err, stdout, stderr) => {
          const code = err ? ((err as NodeJS.ErrnoException & { code?: unknown }).code as unknown) : 0;
          resolve({ code: typeof code === 'number' ? code : err ? null : 0, stdout: String(stdout), stderr: String(stderr) });
        },
      );
    });
    const names = (await readdir(mailDir)).filter((n) => n.endsWith('.eml')).sort();
    const messages = await Promise.all(names.map((n) => readFile(path.join(mailDir, n))));
    return { ...result, messages };
  } finally {
    await removeTempDir(dir);
  }
}

/**
 * What fetchmail delivered, minus what fetchmail itself adds: its Received:
 * header (the first header field, folded over several lines) is removed and
 * line ends are made CRLF again (fetchmail hands an MDA LF-only lines).
 */
export function stripFetchmailTrace(delivered: Buffer): Buffer {
  const text = delivered.toString('latin1').replace(/\r\n/g, '\n');
  const lines = text.split('\n');
  if (!/^Received: /i.test(lines[0] ?? '')) throw new Error(`no Received: header first: ${JSON.stringify(lines.slice(0, 3))}`);
  let i = 1;
  while (i < lines.length && /^[ \t]/.test(lines[i]!)) i++;
  return Buffer.from(lines.slice(i).join('\r\n'), 'latin1');
}

/**
 * What a person sees on the first start of a real `mailgate serve`: JSON lines
 * with level names, and a warning for each thing still to do that says what
 * to do (the master password, the mail server's address, a real certificate,
 * the open-file limit); and `--log-format pretty`: one readable line per
 * event instead of JSON.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { BIN, ROOT, writeCliConfig } from '../support/cli.js';
import { freePort } from '../support/ports.js';
import { waitUntil } from '../support/timing.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';

let dir = '';
let child: ChildProcess | null = null;

afterEach(async () => {
  child?.kill('SIGKILL');
  child = null;
  if (dir) await removeTempDir(dir);
  dir = '';
});

/**
 * The shipped defaults where they matter here: a self-signed certificate
 * generated on first start, no master password, a mail server that is not
 * there; one listener on a free port (tests run side by side), and more
 * connections than any open-file limit allows.
 */
async function firstStartConfig(extra = ''): Promise<string> {
  dir = await makeTempDir('serve-logs');
  return writeCliConfig(
    dir,
    `[tls]
cert = "${dir}/certs/mailgate.crt"
key = "${dir}/certs/mailgate.key"
self_signed = true
[[listen]]
protocol = "imap"
port = 0
tls = "implicit"
[upstream.imap]
port = ${await freePort()}
[timeouts]
upstream_connect_seconds = 2
[limits]
max_connections = 100000000
${extra}`,
  );
}

/**
 * Starts `mailgate serve ARGS`; resolves with its stdout once `ready` matches
 * it. `ready` must include the line's end: output arrives in chunks, and a
 * match on half a line would leave the rest of it unread.
 */
async function serve(args: string[], ready: RegExp): Promise<() => string> {
  let stdout = '';
  let stderr = '';
  child = spawn(process.execPath, [BIN, 'serve', ...args], {
    cwd: ROOT,
    env: { ...process.env, MAILGATE_CONFIG: '', MAILGATE_MASTER_PASSWORD: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  await waitUntil(() => ready.test(stdout) || child!.exitCode !== null, `mailgate serve to start (stdout: ${stdout}, stderr: ${stderr})`, 15_000);
  expect(child.exitCode, stderr).toBeNull();
  return () => stdout;
}

describe('mailgate serve, first start', () => {
  it('writes JSON with level names, and each warning says what to do next', async () => {
    // Catches: numeric levels; a warning that only says what is wrong, not which key to set.
    const output = await serve(['--config', await firstStartConfig()], /"msg":"listening".*\}\n/);
    const lines = output()
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as { level: unknown; msg: string });
    expect(new Set(lines.map((l) => l.level))).toEqual(new Set(['info', 'warn']));
    const warning = (start: string) => {
      const found = lines.filter((l) => l.level === 'warn' && l.msg.startsWith(start));
      expect(found, `a warning "${start}..."`).toHaveLength(1);
      return found[0]!.msg;
    };
    expect(warning('generated a self-signed TLS certificate')).toMatch(/set tls\.cert and tls\.key in \[tls\] to your certificate .* and tls\.self_signed = false/);
    expect(warning('no master password configured')).toMatch(/upstream\.login\.master_password_file .*MAILGATE_MASTER_PASSWORD/);
    expect(warning('IMAP upstream not reachable at start-up')).toMatch(/point upstream\.imap\.host and upstream\.imap\.port at the mail server/);
    expect(warning('the open-file limit is too low')).toMatch(/LimitNOFILE=.*ulimit -n/);
  });

  it('--log-format pretty: one readable line per event, with the level name and the message (over [log] format)', async () => {
    // Catches: the option ignored (JSON still), or the pretty output spread over several lines per event.
    const output = await serve(['--config', await firstStartConfig('[log]\nformat = "json"\n'), '--log-format', 'pretty'], /INFO: listening \{"protocol":"imap".*\}\n/);
    const lines = output().trimEnd().split('\n');
    for (const line of lines) {
      expect(() => JSON.parse(line), line).toThrow();
      expect(line).toMatch(/^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} [+-]\d{4}\] (INFO|WARN): \S/);
    }
    expect(lines.some((l) => /\] INFO: starting mailgate \{"config":".*mailgate\.toml"\}$/.test(l))).toBe(true);
    expect(lines.some((l) => /\] WARN: generated a self-signed TLS certificate; .*tls\.self_signed = false/.test(l))).toBe(true);
    expect(lines.some((l) => /\] INFO: listening \{"protocol":"imap","host":"127\.0\.0\.1","port":\d+,"tls":"implicit"\}$/.test(l))).toBe(true);
  });
});

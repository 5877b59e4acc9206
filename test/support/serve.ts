/**
 * A real `mailgate serve` process (the built binary), for tests that need
 * what only a process has: its own SQLite locks, signals, an exit status.
 * Its JSON log lines are collected from stdout as they come.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { DovecotHandle } from './dovecot.js';
import { BIN, pageOffUnlessConfigured, ROOT } from './cli.js';
import { waitUntil } from './timing.js';

export type LogLine = Record<string, unknown>;

export interface ServeProcess {
  child: ChildProcess;
  /** Every log line so far, parsed (a line that is not JSON shows as a fatal one with its text). */
  logs(): LogLine[];
  stderr(): string;
  /** The first log line with this message (and fields), once there is one. */
  waitForLog(msg: string, fields?: LogLine, timeoutMs?: number): Promise<LogLine>;
  /** The port of the first listener of this protocol and TLS mode (from its `listening` line). */
  port(protocol: 'imap' | 'pop3', tls?: 'implicit' | 'starttls'): number;
  /** Resolves with the exit code once the process has exited. */
  exited: Promise<number | null>;
  /** Sends `signal` (default SIGTERM) and waits for the exit (SIGKILL after `timeoutMs`). */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<number | null>;
}

/**
 * The TOML for a gateway in front of `dc`: its certificate, one implicit-TLS
 * IMAP listener on a free loopback port (more can follow in `extra`), both
 * upstreams over verified STARTTLS, and Dovecot's master user.
 * `proxyProtocol`: that listener expects a PROXY header (behind HAProxy).
 */
export function dovecotServeToml(dc: DovecotHandle, extra = '', options: { proxyProtocol?: boolean } = {}): string {
  return `[tls]
cert = ${JSON.stringify(dc.pki.serverCert)}
key = ${JSON.stringify(dc.pki.serverKey)}
self_signed = false

[[listen]]
protocol = "imap"
host = "127.0.0.1"
port = 0
tls = "implicit"
${options.proxyProtocol ? 'proxy_protocol = true\n' : ''}
[upstream.imap]
host = "127.0.0.1"
port = ${dc.imapPort}
tls = "starttls"
ca = ${JSON.stringify(dc.caCert)}

[upstream.pop3]
host = "127.0.0.1"
port = ${dc.pop3Port}
tls = "starttls"
ca = ${JSON.stringify(dc.caCert)}

[upstream.login]
master_user = ${JSON.stringify(dc.master.name)}
${extra}
${pageOffUnlessConfigured(extra)}`;
}

/**
 * Starts `mailgate serve --config configFile` with `env` added (the master
 * password, say) and resolves once `listeners` listeners are up.
 */
export async function startServe(configFile: string, env: NodeJS.ProcessEnv, listeners = 1): Promise<ServeProcess> {
  const child = spawn(process.execPath, [BIN, 'serve', '--config', configFile], {
    cwd: ROOT,
    env: { ...process.env, MAILGATE_CONFIG: '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: LogLine[] = [];
  let buffer = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => {
    buffer += d.toString();
    for (let nl = buffer.indexOf('\n'); nl >= 0; nl = buffer.indexOf('\n')) {
      const text = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      try {
        lines.push(JSON.parse(text) as LogLine);
      } catch {
        lines.push({ level: 'fatal', msg: `not a JSON log line: ${text}` });
      }
    }
  });
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const matching = (msg: string, fields: LogLine) => lines.filter((l) => l.msg === msg && Object.entries(fields).every(([k, v]) => l[k] === v));
  const handle: ServeProcess = {
    child,
    logs: () => [...lines],
    stderr: () => stderr,
    waitForLog: (msg, fields = {}, timeoutMs = 10_000) => waitUntil(() => matching(msg, fields)[0], `the log line "${msg}" (stderr: ${stderr})`, timeoutMs),
    port(protocol, tls = 'implicit') {
      const line = matching('listening', { protocol, tls })[0];
      if (!line) throw new Error(`no ${protocol}/${tls} listener`);
      return line.port as number;
    },
    exited,
    async stop(signal = 'SIGTERM', timeoutMs = 10_000) {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      try {
        return await exited;
      } finally {
        clearTimeout(timer);
      }
    },
  };
  try {
    await waitUntil(() => child.exitCode !== null || matching('listening', {}).length >= listeners, `${listeners} listener(s) (stderr: ${stderr})`, 15_000);
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  if (child.exitCode !== null) throw new Error(`mailgate serve exited with ${child.exitCode}: ${stderr}`);
  return handle;
}

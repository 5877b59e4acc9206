/**
 * `mailgate serve` as an operator runs it: the built binary in its own
 * process, with a config file. First start generates a self-signed pair (and
 * warns), later starts reuse it; `self_signed = false` without certificates refuses to start; an
 * unreachable upstream is a clear per-login error, not a crash.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import { BIN, ROOT, runCli, writeCliConfig } from '../support/cli.js';
import { freePort } from '../support/ports.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';
import { hasLevel } from '../support/log-levels.js';

let dir = '';
let child: ChildProcess | null = null;
afterEach(async () => {
  child?.kill('SIGKILL');
  child = null;
  if (dir) await removeTempDir(dir);
  dir = '';
});

/** The CLI test config plus TLS files in the temp dir, two implicit-TLS listeners and a dead upstream. */
async function writeConfig(tlsExtra: string): Promise<string> {
  dir = await makeTempDir('serve');
  const deadPort = await freePort();
  return writeCliConfig(
    dir,
    `[tls]
cert = "${dir}/certs/mailgate.crt"
key = "${dir}/certs/mailgate.key"
${tlsExtra}
[[listen]]
protocol = "imap"
port = 0
tls = "implicit"
[[listen]]
protocol = "pop3"
port = 0
tls = "implicit"
[upstream.imap]
port = ${deadPort}
[upstream.pop3]
port = ${deadPort}
[timeouts]
upstream_connect_seconds = 2
`,
  );
}

interface Running {
  lines: Array<Record<string, unknown>>;
  ports: { imap: number; pop3: number };
}

function serve(config: string): Promise<Running> {
  return new Promise((resolve, reject) => {
    child = spawn(process.execPath, [BIN, 'serve', '--config', config], {
      cwd: ROOT,
      env: { ...process.env, MAILGATE_MASTER_PASSWORD: 'not-used-here' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const lines: Array<Record<string, unknown>> = [];
    const ports: Partial<Running['ports']> = {};
    let buffer = '';
    child.stdout!.on('data', (d: Buffer) => {
      buffer += d.toString();
      let nl: number;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const line = JSON.parse(buffer.slice(0, nl)) as Record<string, unknown>;
        buffer = buffer.slice(nl + 1);
        lines.push(line);
        if (line.msg === 'listening') ports[line.protocol as 'imap' | 'pop3'] = line.port as number;
        if (ports.imap && ports.pop3) resolve({ lines, ports: ports as Running['ports'] });
      }
    });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('exit', (code) => reject(new Error(`serve exited with ${code}: ${stderr}`)));
  });
}

/** Stops the running `mailgate serve` the way an init system does, and waits for it to exit. */
function stopServe(): Promise<void> {
  const running = child;
  child = null;
  if (!running || running.exitCode !== null) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('serve did not stop on SIGTERM')), 15_000);
    running.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    running.kill('SIGTERM');
  });
}

/** SHA-256 fingerprint of the certificate the gateway presents on `port`. */
function servedFingerprint(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
      resolve(socket.getPeerCertificate().fingerprint256);
      socket.destroy();
    });
    socket.on('error', reject);
    setTimeout(() => reject(new Error('no TLS handshake')), 10_000).unref();
  });
}

function talk(port: string | number, send: string, until: RegExp, ca?: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port: Number(port), ...(ca ? { ca, servername: 'localhost' } : { rejectUnauthorized: false }) });
    let text = '';
    socket.once('secureConnect', () => socket.write(send));
    socket.on('data', (d) => {
      text += d.toString();
      if (until.test(text)) {
        socket.destroy();
        resolve(text);
      }
    });
    socket.on('error', reject);
    setTimeout(() => reject(new Error(`timeout; got ${JSON.stringify(text)}`)), 10_000).unref();
  });
}

describe('mailgate serve', () => {
  it('generates a self-signed certificate on first start, warns, and serves with it', async () => {
    const config = await writeConfig('self_signed = true');
    const running = await serve(config);
    const cert = path.join(dir, 'certs/mailgate.crt');
    expect(existsSync(cert)).toBe(true);
    expect(statSync(path.join(dir, 'certs/mailgate.key')).mode & 0o777).toBe(0o600);
    expect(running.lines.some((l) => hasLevel(l, 'warn') && String(l.msg).includes('self-signed'))).toBe(true);
    // The generated certificate verifies for localhost.
    const greeting = await talk(running.ports.imap, '', /\r\n/, readFileSync(cert));
    expect(greeting).toMatch(/^\* OK \[CAPABILITY IMAP4rev1 SASL-IR LITERAL\+ ID ENABLE.* AUTH=PLAIN AUTH=LOGIN\] /);
  });

  it('reuses the generated pair on the next start instead of making a new one', async () => {
    const config = await writeConfig('self_signed = true');
    const certFile = path.join(dir, 'certs/mailgate.crt');
    const keyFile = path.join(dir, 'certs/mailgate.key');
    const first = await serve(config);
    const fingerprint = new X509Certificate(readFileSync(certFile)).fingerprint256;
    expect(await servedFingerprint(first.ports.imap)).toBe(fingerprint);
    const files = { cert: readFileSync(certFile), key: readFileSync(keyFile), certMtime: statSync(certFile).mtimeMs, keyMtime: statSync(keyFile).mtimeMs };
    await stopServe();

    const second = await serve(config);
    expect(second.lines.some((l) => String(l.msg).includes('self-signed'))).toBe(false);
    expect(readFileSync(certFile).equals(files.cert)).toBe(true);
    expect(readFileSync(keyFile).equals(files.key)).toBe(true);
    expect(statSync(certFile).mtimeMs).toBe(files.certMtime);
    expect(statSync(keyFile).mtimeMs).toBe(files.keyMtime);
    expect(await servedFingerprint(second.ports.imap)).toBe(fingerprint);
    expect(await servedFingerprint(second.ports.pop3)).toBe(fingerprint);
  });

  it('answers a login with [UNAVAILABLE] / [SYS/TEMP] while the upstream is down, and keeps running', async () => {
    const config = await writeConfig('self_signed = true');
    const running = await serve(config);
    expect(running.lines.some((l) => String(l.msg).includes('not reachable at start-up'))).toBe(true);
    // A passthrough-able account (no 2FA) so the login reaches the upstream step.
    expect((await runCli(['--config', config, 'account', 'add', 'alice'])).code).toBe(0);
    const imap = await talk(running.ports.imap, 'a LOGIN alice secret\r\n', /^a /m);
    expect(imap).toMatch(/^a NO \[UNAVAILABLE\] /m);
    const pop = await talk(running.ports.pop3, 'USER alice\r\nPASS secret\r\n', /^-ERR/m);
    expect(pop).toMatch(/^-ERR \[SYS\/TEMP\] /m);
    expect(child!.exitCode).toBeNull();
  });

  it('refuses to start without certificates when self_signed = false, in one line', async () => {
    const config = await writeConfig('self_signed = false');
    const result = await runCli(['serve', '--config', config]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/^mailgate: tls\.cert .*mailgate\.crt is missing and tls\.self_signed is false; point it at the file, or set tls\.self_signed = true for a generated test certificate\n$/);
  });
});

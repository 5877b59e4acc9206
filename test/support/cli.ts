/** Runs the built `mailgate` binary as a child process, as an administrator would. */
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BIN = path.join(ROOT, 'bin', 'mailgate.js');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface CliUser {
  uid: number;
  gid: number;
}

export function runCli(
  args: string[],
  options: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number; user?: CliUser | null } = {},
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd: options.cwd ?? ROOT,
      env: { ...process.env, MAILGATE_CONFIG: '', ...options.env },
      stdio: ['ignore', 'pipe', 'pipe'],
      ...(options.user ? { uid: options.user.uid, gid: options.user.gid } : {}),
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 20_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout, stderr });
    });
  });
}

/**
 * Who to run the CLI as when a test needs it refused what root may always do
 * (read any file, bind any port): `nobody` when the tests run as root, null
 * (the test user itself) otherwise.
 */
export function unprivilegedUser(): CliUser | null {
  if (process.getuid?.() !== 0) return null;
  const line = readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('nobody:'));
  const [, , uid, gid] = line?.split(':') ?? [];
  if (uid === undefined || gid === undefined) throw new Error('running as root, but there is no user "nobody" to run the CLI as');
  return { uid: Number(uid), gid: Number(gid) };
}

/**
 * The self-service page listens on 127.0.0.1:8443 by default: test configs
 * turn it off (test files run side by side) unless they configure it.
 */
export function pageOffUnlessConfigured(toml: string): string {
  return /^\[web\]/m.test(toml) ? '' : '[web]\nlisten = ""\n';
}

/** Writes a config file for the CLI with cheap argon2 settings and store paths inside `dir`. */
export function writeCliConfig(dir: string, extra = ''): string {
  const file = path.join(dir, 'mailgate.toml');
  writeFileSync(
    file,
    `[store]
path = "${path.join(dir, 'data', 'mailgate.db')}"
key_file = "${path.join(dir, 'data', 'mailgate.key')}"
busy_timeout_ms = 300

[auth]
argon2_memory_kib = 1024
argon2_iterations = 1
max_app_passwords = 3
${extra}
${pageOffUnlessConfigured(extra)}`,
  );
  return file;
}

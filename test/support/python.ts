/**
 * Run a Python snippet as a real client (imaplib, poplib, ssl, ...).
 *
 * - Interpreter: /usr/bin/python3 (Debian's, whose ssl module links the system
 *   OpenSSL) if present, else `python3` from PATH.
 * - Runs `python3 -I -u -c <prelude + script>`: isolated mode (no user
 *   site-packages, no PYTHON* env vars, no cwd on sys.path) and unbuffered.
 * - The script is dedented, so it can be written as an indented template literal.
 * - `input` is JSON-encoded and written to the child's stdin; the prelude
 *   decodes it into the global `INPUT` (None when no input). It also defines
 *   `emit(obj)`, which prints obj as one JSON line; if the last non-empty
 *   stdout line parses as JSON, it is returned as `json`.
 * - Handy for binary data: the prelude imports `base64`, `json`, `sys`.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import os from 'node:os';

export interface PythonResult {
  code: number;
  stdout: string;
  stderr: string;
  /** the last stdout line, if it is valid JSON */
  json?: unknown;
}

export interface PythonOptions {
  /** kill the interpreter after this long and reject (default 20 s) */
  timeoutMs?: number;
}

export const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

const PRELUDE = [
  'import base64, json, sys',
  "INPUT = json.loads(sys.stdin.read() or 'null')",
  'def emit(obj):',
  '    sys.stdout.write(json.dumps(obj) + "\\n")',
  '    sys.stdout.flush()',
  '',
].join('\n');

/** Strip the common leading indentation of all non-blank lines. */
export function dedent(text: string): string {
  const lines = text.replace(/\r\n/g, '\n').replace(/^\n+/, '').split('\n');
  let indent = Infinity;
  for (const line of lines) {
    if (line.trim() === '') continue;
    const m = /^[ \t]*/.exec(line);
    indent = Math.min(indent, m ? m[0].length : 0);
  }
  if (!Number.isFinite(indent)) return lines.join('\n');
  return lines.map((l) => l.slice(indent)).join('\n');
}

function lastJsonLine(stdout: string): unknown {
  const lines = stdout.split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
  const last = lines[lines.length - 1];
  if (last === undefined) return undefined;
  try {
    return JSON.parse(last) as unknown;
  } catch {
    return undefined;
  }
}

/**
 * Run `script` with Python 3. Resolves with the exit code and output (a
 * non-zero exit is NOT an error: assert on `code`); rejects only if Python
 * cannot be started or exceeds the timeout.
 */
export function runPython(script: string, input?: unknown, opts: PythonOptions = {}): Promise<PythonResult> {
  const timeoutMs = opts.timeoutMs ?? 20_000;
  const source = PRELUDE + dedent(script);
  return new Promise((resolve, reject) => {
    const child = spawn(PYTHON, ['-I', '-u', '-c', source], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LANG: 'C.UTF-8', PYTHONIOENCODING: 'utf-8' },
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`runPython: cannot run ${PYTHON}: ${e.message}`));
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      const stdout = Buffer.concat(out).toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      if (timedOut) {
        reject(new Error(`runPython: timed out after ${timeoutMs} ms\n--- stdout ---\n${stdout}\n--- stderr ---\n${stderr}`));
        return;
      }
      // Killed by a signal: report it the shell way, 128 + signal number.
      const sigNo = signal ? (os.constants.signals[signal] ?? 0) : 0;
      const result: PythonResult = { code: code ?? 128 + sigNo, stdout, stderr };
      const json = lastJsonLine(stdout);
      if (json !== undefined) result.json = json;
      resolve(result);
    });
    // EPIPE if the script exits without reading stdin: not an error for us.
    child.stdin.on('error', () => undefined);
    child.stdin.end(input === undefined ? '' : JSON.stringify(input));
  });
}

/**
 * Python every mail-client script starts with (see mailClientScript): TLS to
 * 127.0.0.1 with the certificate verified as 'localhost' against INPUT['ca'].
 * - ctx(): the SSL context (TLS 1.2 at least);
 * - IMAPS, POP3S: implicit TLS; IMAP, POP3: plain TCP, for starttls()/stls(),
 *   which verify the certificate against self.host (pass 'localhost');
 * - b64(bytes), retr_bytes(pop3, n): a message as its bytes, CRLFs put back;
 * - the ID command registered with imaplib.
 */
export const MAIL_CLIENTS_PY = dedent(`
  import imaplib, poplib, socket, ssl
  imaplib.Commands.setdefault('ID', ('NONAUTH', 'AUTH', 'SELECTED'))

  def ctx():
      c = ssl.create_default_context(cafile=INPUT['ca'])
      c.minimum_version = ssl.TLSVersion.TLSv1_2
      return c

  class IMAPS(imaplib.IMAP4_SSL):
      def _create_socket(self, timeout):
          raw = socket.create_connection(('127.0.0.1', self.port), timeout)
          return self.ssl_context.wrap_socket(raw, server_hostname='localhost')

  class IMAP(imaplib.IMAP4):
      def _create_socket(self, timeout):
          return socket.create_connection(('127.0.0.1', self.port), timeout)

  class POP3S(poplib.POP3_SSL):
      def _create_socket(self, timeout):
          raw = socket.create_connection(('127.0.0.1', self.port), timeout)
          return self.context.wrap_socket(raw, server_hostname='localhost')

  class POP3(poplib.POP3):
      def _create_socket(self, timeout):
          return socket.create_connection(('127.0.0.1', self.port), timeout)

  def b64(data):
      return base64.b64encode(data).decode('ascii')

  def retr_bytes(p, n):
      # poplib strips the CRLFs and undoes the dot-stuffing; put the CRLFs back.
      resp, lines, octets = p.retr(n)
      return b''.join(line + b'\\r\\n' for line in lines)
`);

/** MAIL_CLIENTS_PY followed by `parts`, each dedented on its own (so each can be an indented template literal). */
export function mailClientScript(...parts: string[]): string {
  return [MAIL_CLIENTS_PY, ...parts.map(dedent)].join('\n');
}

/** Runs `script` and returns the JSON object it emitted last; throws with its output unless it exited 0 having emitted one. */
export async function pythonJson(script: string, input: unknown, timeoutMs?: number): Promise<Record<string, unknown>> {
  const res = await runPython(script, input, timeoutMs === undefined ? {} : { timeoutMs });
  if (res.code !== 0 || typeof res.json !== 'object' || res.json === null) {
    throw new Error(`python failed (code ${res.code})\n--- stdout ---\n${res.stdout}\n--- stderr ---\n${res.stderr}`);
  }
  return res.json as Record<string, unknown>;
}

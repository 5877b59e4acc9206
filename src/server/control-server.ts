/**
 * The gateway's end of the control socket (control-protocol.ts): `mailgate
 * who` lists the live sessions, `mailgate kick USER` closes an account's.
 *
 * The socket is created mode 0600 (under a umask of 0177, so it is never
 * more open, not even between bind and chmod): only the gateway's user and
 * root can connect. A socket left by a gateway that died is removed at
 * start; one that still answers belongs to a running gateway, and this one
 * refuses to start rather than take it over. The file is removed at shutdown.
 */
import { chmodSync, lstatSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import { FIXED_LIMITS } from '../config/limits.js';
import { ErrorCodes, errorMessage, MailgateError } from '../errors.js';
import type { Logger } from '../log/logger.js';
import type { SessionAuth, SessionRegistry, TrackedSession } from '../session/registry.js';
import { tryNormaliseUsername } from '../store/username.js';
import { parseControlRequest, type ControlRequest, type ControlResponse, type LiveSession } from './control-protocol.js';

const TIMEOUT_MS = FIXED_LIMITS.control_timeout_seconds * 1000;
/** sun_path holds 108 bytes on Linux, the terminating NUL included. */
const MAX_SOCKET_PATH_BYTES = 107;

type LoggedIn = TrackedSession & { auth: SessionAuth };

export class ControlServer {
  private constructor(
    private readonly server: net.Server,
    readonly path: string,
  ) {}

  static async start(file: string, registry: SessionRegistry, log: Logger): Promise<ControlServer> {
    if (Buffer.byteLength(file) > MAX_SOCKET_PATH_BYTES) {
      throw controlError(file, `the path is ${Buffer.byteLength(file)} bytes, longer than a Unix socket's (${MAX_SOCKET_PATH_BYTES}); set control.socket to a shorter one`);
    }
    await clearStale(file, log);
    const server = net.createServer((socket) => converse(socket, registry, log));
    await listenPrivately(server, file);
    log.info({ path: file }, 'control socket listening');
    return new ControlServer(server, file);
  }

  /**
   * Stops answering. Closing the listening socket removes its file (libuv
   * unlinks the path it bound); one left by a crash is cleared at the next start.
   */
  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/**
 * What is at `file` before the gateway listens there: nothing; a socket a
 * dead gateway left (nothing answers: removed); a running gateway's (it
 * answers: refused); or something else (refused, never removed).
 */
async function clearStale(file: string, log: Logger): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(file).isSocket();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw controlError(file, errorMessage(err));
  }
  if (!isSocket) throw controlError(file, 'the file exists and is not a socket; remove it, or set control.socket to another path');
  const answer = await knock(file);
  if (answer === 'answers') {
    throw controlError(file, 'another mailgate is running and answers on it; stop that one first, or give this one its own control.socket');
  }
  if (answer !== 'ECONNREFUSED') throw controlError(file, `cannot tell whether another mailgate uses it (${answer})`);
  unlinkSync(file);
  log.info({ path: file }, 'removed a stale control socket (a gateway that did not stop cleanly left it)');
}

/** Connects to the socket at `file`: 'answers', or the error code. */
function knock(file: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect(file);
    const done = (result: string) => {
      socket.destroy();
      resolve(result);
    };
    socket.setTimeout(TIMEOUT_MS, () => done('ETIMEDOUT'));
    socket.once('connect', () => done('answers'));
    socket.once('error', (err: NodeJS.ErrnoException) => done(err.code ?? err.message));
  });
}

/**
 * Listens on `file` with a umask that leaves the socket 0600 from the moment
 * it exists (net.Server binds a path synchronously within listen()), and
 * sets the mode again in case the platform ignored the umask for sockets.
 */
async function listenPrivately(server: net.Server, file: string): Promise<void> {
  const listening = new Promise<void>((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
  });
  const umask = process.umask(0o177);
  try {
    server.listen(file);
  } finally {
    process.umask(umask);
  }
  try {
    await listening;
  } catch (err) {
    throw controlError(file, `cannot listen: ${errorMessage(err)}`);
  }
  chmodSync(file, 0o600);
  // A broken client connection must not stop the control socket (nor the gateway).
  server.on('error', () => undefined);
}

/** One exchange: a request line in, an answer line out, then the connection ends. */
function converse(socket: net.Socket, registry: SessionRegistry, log: Logger): void {
  let buffered = '';
  socket.setEncoding('utf8');
  socket.setTimeout(TIMEOUT_MS, () => socket.destroy());
  socket.on('error', () => socket.destroy());
  const onData = (chunk: string) => {
    buffered += chunk;
    const end = buffered.indexOf('\n');
    if (end < 0 && buffered.length <= FIXED_LIMITS.control_request_bytes) return;
    socket.removeListener('data', onData);
    const request = end >= 0 && end <= FIXED_LIMITS.control_request_bytes ? parseControlRequest(buffered.slice(0, end)) : null;
    const response: ControlResponse = request ? answer(request, registry, log) : { ok: false, error: 'not a request this gateway understands' };
    socket.end(`${JSON.stringify(response)}\n`);
  };
  socket.on('data', onData);
}

function answer(request: ControlRequest, registry: SessionRegistry, log: Logger): ControlResponse {
  if (request.command === 'who') {
    return { ok: true, sessions: [...registry.authenticated()].map(describe), prelogin: registry.counts().prelogin };
  }
  const user = tryNormaliseUsername(request.user);
  if (user === null) return { ok: false, error: 'that is not a username' };
  // Sessions keep the name as the client typed it (passthrough): compared in normalised form.
  const targets = [...registry.authenticated()].filter((s) => (tryNormaliseUsername(s.auth.username) ?? s.auth.username) === user);
  const closed = targets.map(describe);
  for (const session of targets) session.terminate('kicked');
  log.info({ user, sessions: closed.length }, 'kicked the sessions of an account');
  return { ok: true, sessions: closed };
}

function describe(session: LoggedIn): LiveSession {
  return {
    id: session.id,
    user: session.auth.username,
    protocol: session.protocol,
    clientIp: session.client.address,
    clientPort: session.client.port,
    since: new Date(session.auth.loginAt).toISOString(),
    mode: session.auth.mode,
    appPasswordId: session.auth.appPasswordId,
    appPasswordName: session.auth.appPasswordName,
  };
}

function controlError(file: string, why: string): MailgateError {
  return new MailgateError(ErrorCodes.CONTROL_SOCKET, `control.socket ${file}: ${why}`);
}

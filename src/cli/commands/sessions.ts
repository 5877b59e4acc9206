/**
 * `mailgate who` and `mailgate kick USER`: the live sessions of the running
 * gateway, like `doveadm who` and `doveadm kick`. They ask the gateway over
 * its control socket (server/control-protocol.ts), which only the gateway's
 * user and root can open; the store is not touched.
 */
import net from 'node:net';
import { Command } from 'commander';
import { FIXED_LIMITS } from '../../config/limits.js';
import { ErrorCodes, MailgateError } from '../../errors.js';
import { controlSocketPath, type ControlRequest, type LiveSession } from '../../server/control-protocol.js';
import { normaliseUsername } from '../../store/username.js';
import { globalOptions, loadCommandConfig } from '../context.js';
import { printable, printJson, printLine, printTable, shortTime } from '../output.js';

const TIMEOUT_MS = FIXED_LIMITS.control_timeout_seconds * 1000;

interface Answer {
  sessions: LiveSession[];
  prelogin?: number;
}

/** Sends one request to the running gateway and returns its answer; a one-line error when none runs or it refuses. */
function askGateway(file: string, request: ControlRequest): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(file);
    let text = '';
    socket.setEncoding('utf8');
    socket.setTimeout(TIMEOUT_MS, () => {
      socket.destroy();
      reject(new MailgateError(ErrorCodes.GATEWAY_NOT_RUNNING, `the gateway did not answer on its control socket ${file} within ${TIMEOUT_MS / 1000} s`));
    });
    socket.once('connect', () => socket.write(`${JSON.stringify(request)}\n`));
    socket.on('data', (chunk: string) => (text += chunk));
    socket.once('error', (err: NodeJS.ErrnoException) => reject(connectError(file, err)));
    socket.once('end', () => {
      socket.destroy();
      let response: { ok?: unknown; error?: unknown; sessions?: unknown; prelogin?: unknown };
      try {
        response = JSON.parse(text) as typeof response;
      } catch {
        reject(new MailgateError(ErrorCodes.GATEWAY_NOT_RUNNING, `the gateway's control socket ${file} gave no answer this mailgate understands`));
        return;
      }
      if (response.ok !== true || !Array.isArray(response.sessions)) {
        reject(new MailgateError(ErrorCodes.GATEWAY_NOT_RUNNING, `the gateway refused the request: ${String(response.error ?? 'no reason given')}`));
        return;
      }
      resolve({ sessions: response.sessions as LiveSession[], ...(typeof response.prelogin === 'number' ? { prelogin: response.prelogin } : {}) });
    });
  });
}

function connectError(file: string, err: NodeJS.ErrnoException): MailgateError {
  if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
    return new MailgateError(ErrorCodes.GATEWAY_NOT_RUNNING, `no gateway is running for this configuration: nothing answers on ${file} (control.socket)`);
  }
  if (err.code === 'EACCES' || err.code === 'EPERM') {
    return new MailgateError(ErrorCodes.GATEWAY_NOT_RUNNING, `cannot open the gateway's control socket ${file}: permission denied; run this as the gateway's user (or root)`);
  }
  return new MailgateError(ErrorCodes.GATEWAY_NOT_RUNNING, `cannot reach the gateway on ${file}: ${err.code ?? err.message}`);
}

/** "3 laptop", "-" for the account password. */
function appPassword(session: LiveSession): string {
  if (session.appPasswordId === null) return '-';
  return `${session.appPasswordId} ${printable(session.appPasswordName, 40)}`;
}

function printSessions(sessions: LiveSession[]): void {
  printTable(
    ['USER', 'PROTOCOL', 'CLIENT', 'SINCE (UTC)', 'APP PASSWORD', 'MODE'],
    sessions.map((s) => [printable(s.user), s.protocol, `${s.clientIp}:${s.clientPort}`, shortTime(Date.parse(s.since)), appPassword(s), s.mode]),
  );
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

export function whoCommand(): Command {
  return new Command('who')
    .description("list the running gateway's logged-in sessions (user, protocol, client, since, app password, mode)")
    .argument('[user]', "only this account's sessions")
    .option('--json', 'print JSON')
    .action(async (user: string | undefined, _opts, cmd: Command) => {
      const only = user === undefined ? null : normaliseUsername(user);
      const { config } = loadCommandConfig(cmd);
      const answer = await askGateway(controlSocketPath(config), { command: 'who' });
      const sessions = answer.sessions
        .filter((s) => only === null || s.user.toLowerCase() === only)
        .sort((a, b) => a.user.localeCompare(b.user) || a.since.localeCompare(b.since));
      if (globalOptions(cmd).json) return printJson({ sessions, prelogin: answer.prelogin ?? 0 });
      const waiting = answer.prelogin ? `; ${answer.prelogin} more not logged in yet` : '';
      if (sessions.length === 0) return printLine(`no logged-in sessions${only === null ? '' : ` of ${printable(only)}`}${waiting}`);
      printSessions(sessions);
      printLine(`${plural(sessions.length, 'session')} of ${plural(new Set(sessions.map((s) => s.user.toLowerCase())).size, 'user')}${waiting}`);
    });
}

export function kickCommand(): Command {
  return new Command('kick')
    .description("close every session of an account in the running gateway (its mail programs may log in again)")
    .argument('<user>', 'the account')
    .option('--json', 'print JSON')
    .action(async (user: string, _opts, cmd: Command) => {
      const name = normaliseUsername(user);
      const { config } = loadCommandConfig(cmd);
      const { sessions } = await askGateway(controlSocketPath(config), { command: 'kick', user: name });
      if (globalOptions(cmd).json) return printJson({ user: name, sessions });
      if (sessions.length === 0) return printLine(`${printable(name)} has no open sessions`);
      printLine(`closed ${plural(sessions.length, 'session')} of ${printable(name)}:`);
      printSessions(sessions);
    });
}

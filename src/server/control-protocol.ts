/**
 * The control socket's protocol, shared by the gateway (control-server.ts)
 * and the CLI (`mailgate who`, `mailgate kick`).
 *
 * A Unix socket, mode 0600, that only the gateway's user (and root) can
 * open: the file's mode is the access control. One connection carries one
 * exchange: the client writes one JSON object on one line, the gateway
 * answers with one JSON object on one line and closes.
 *
 *   {"command":"who"}                 -> {"ok":true,"sessions":[...],"prelogin":N}
 *   {"command":"kick","user":"alice"} -> {"ok":true,"sessions":[...the ones closed]}
 *   anything else                     -> {"ok":false,"error":"..."}
 */
import path from 'node:path';
import type { Config } from '../config/schema.js';
import { configPath } from '../config/load.js';

/** The file name of the default socket, in the store's folder. */
export const DEFAULT_CONTROL_SOCKET_NAME = 'mailgate.sock';

/**
 * Where the control socket is: `control.socket`, or `mailgate.sock` beside
 * the store (a folder only the gateway's user can write, and one per store).
 */
export function controlSocketPath(config: Pick<Config, 'control' | 'store'>): string {
  if (config.control.socket) return configPath(config.control.socket);
  return path.join(path.dirname(configPath(config.store.path)), DEFAULT_CONTROL_SOCKET_NAME);
}

export type ControlRequest = { command: 'who' } | { command: 'kick'; user: string };

/** One live, logged-in session, as `who` lists it. */
export interface LiveSession {
  id: string;
  user: string;
  protocol: 'imap' | 'pop3';
  clientIp: string;
  clientPort: number;
  /** When it logged in, ISO 8601 UTC. */
  since: string;
  mode: 'app-password' | 'upstream-password';
  appPasswordId: number | null;
  appPasswordName: string | null;
}

export type ControlResponse =
  | { ok: true; sessions: LiveSession[]; prelogin?: number }
  | { ok: false; error: string };

/** Parses one request line; null when it is not a request this gateway knows. */
export function parseControlRequest(line: string): ControlRequest | null {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null) return null;
  const { command, user } = value as { command?: unknown; user?: unknown };
  if (command === 'who') return { command };
  if (command === 'kick' && typeof user === 'string' && user.length > 0) return { command, user };
  return null;
}

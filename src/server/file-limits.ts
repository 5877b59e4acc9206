/**
 * The open-file limit against `limits.max_connections`: each session holds
 * two sockets (client and upstream), plus a margin for everything else. One
 * rule for the warning at start-up and for `mailgate check`.
 */
import { readFileSync } from 'node:fs';
import { FIXED_LIMITS } from '../config/limits.js';
import type { Config } from '../config/schema.js';

export interface FileLimit {
  /** The soft limit (`ulimit -n`, systemd LimitNOFILE), or null for unlimited. */
  soft: number | null;
  /** What max_connections needs. */
  needed: number;
  ok: boolean;
  /** Sessions the limit allows, when it is short of `needed`. */
  maxSessions: number;
}

/** Descriptors `max_connections` sessions need. */
export function descriptorsNeeded(config: Pick<Config, 'limits'>): number {
  return 2 * config.limits.max_connections + FIXED_LIMITS.file_descriptor_margin;
}

/**
 * This process's open-file limit against what the configuration needs, from
 * /proc/self/limits (Linux); null where that cannot be read (the check is
 * skipped elsewhere).
 */
export function fileLimit(config: Pick<Config, 'limits'>, limits: string | null = readProcLimits()): FileLimit | null {
  const soft = limits === null ? undefined : /^Max open files\s+(\d+|unlimited)/m.exec(limits)?.[1];
  if (soft === undefined) return null;
  const needed = descriptorsNeeded(config);
  if (soft === 'unlimited') return { soft: null, needed, ok: true, maxSessions: config.limits.max_connections };
  const value = Number(soft);
  return { soft: value, needed, ok: value >= needed, maxSessions: Math.max(0, Math.floor((value - FIXED_LIMITS.file_descriptor_margin) / 2)) };
}

function readProcLimits(): string | null {
  try {
    return readFileSync('/proc/self/limits', 'utf8');
  } catch {
    return null;
  }
}

/** What to do about a short limit, in the operator's terms. */
export const RAISE_FILE_LIMIT_ADVICE = 'raise the open-file limit (systemd: LimitNOFILE= in the unit; a shell: ulimit -n) or lower limits.max_connections';

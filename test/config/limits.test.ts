/**
 * Issue 5: every limit is configurable (or fixed), collected in
 * src/config/limits.ts with a line saying why its default is what it is, and
 * the schema takes its defaults from there.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { FIXED_LIMITS, LIMIT_DEFAULTS, LIMIT_MAXIMA } from '../../src/config/limits.js';
import { ConfigError, parseConfig } from '../../src/config/load.js';
import { ROOT } from '../support/cli.js';

const SOURCE = readFileSync(path.join(ROOT, 'src/config/limits.ts'), 'utf8');

/** The body of `export const NAME = { ... } as const;` in limits.ts. */
function objectBody(name: string): string {
  const match = new RegExp(`export const ${name} = \\{\\n([\\s\\S]*?)\\n\\} as const;`).exec(SOURCE);
  if (!match) throw new Error(`${name} not found in limits.ts`);
  return match[1]!;
}

/** Keys of an object literal whose entry is not directly preceded by a doc comment. */
function keysWithoutWhy(body: string): string[] {
  const lines = body.split('\n');
  const missing: string[] = [];
  lines.forEach((line, i) => {
    const key = /^ {2}([a-z0-9_]+):/.exec(line)?.[1];
    if (!key) return;
    const previous = lines
      .slice(0, i)
      .reverse()
      .find((l) => l.trim() !== '');
    if (!previous?.trim().endsWith('*/')) missing.push(key);
  });
  return missing;
}

/** Where the schema keeps a key: `section.key`, searched over the parsed defaults. */
function defaultsByKey(): Map<string, unknown[]> {
  const config = parseConfig({}, 'defaults') as unknown as Record<string, Record<string, unknown>>;
  const byKey = new Map<string, unknown[]>();
  for (const section of ['store', 'auth', 'timeouts', 'limits']) {
    for (const [key, value] of Object.entries(config[section]!)) byKey.set(key, [...(byKey.get(key) ?? []), value]);
  }
  return byKey;
}

function refusal(raw: unknown): string | null {
  try {
    parseConfig(raw, 'f.toml');
    return null;
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
}

describe('limits in one place', () => {
  it.each(['LIMIT_DEFAULTS', 'LIMIT_MAXIMA', 'FIXED_LIMITS'])('every entry of %s has a line saying why', (name) => {
    const body = objectBody(name);
    const keys = Object.keys({ LIMIT_DEFAULTS, LIMIT_MAXIMA, FIXED_LIMITS }[name]!);
    // The parser above sees exactly the object's keys, so a missing comment cannot hide.
    expect(body.match(/^ {2}[a-z0-9_]+:/gm)?.length).toBe(keys.length);
    expect(keysWithoutWhy(body)).toEqual([]);
  });

  it('the schema takes each configurable default from limits.ts', () => {
    const byKey = defaultsByKey();
    for (const [key, value] of Object.entries(LIMIT_DEFAULTS)) {
      expect(byKey.get(key), `schema default of ${key}`).toEqual([value]);
    }
  });

  it('the timeouts, caches and store wait named in issue 5 are collected there', () => {
    for (const key of [
      'shutdown_grace_seconds',
      'revocation_check_seconds',
      'upstream_connect_seconds',
      'upstream_response_seconds',
      'session_idle_seconds',
      'gateway_busy_timeout_ms',
      'login_cache_max_entries',
      'failed_login_cache_max_entries',
    ]) {
      expect(LIMIT_DEFAULTS, key).toHaveProperty(key);
    }
    for (const key of ['sasl_max_decoded_bytes', 'imap_max_tag_bytes', 'abuse_max_fingerprints', 'proxy_v1_max_bytes', 'proxy_v2_max_bytes']) {
      expect(FIXED_LIMITS, key).toHaveProperty(key);
    }
  });

  it('keeps revocation checks frequent enough to close a revoked session within 5 seconds', () => {
    expect(LIMIT_MAXIMA.revocation_check_seconds).toBeLessThanOrEqual(5);
    expect(LIMIT_DEFAULTS.revocation_check_seconds).toBeLessThanOrEqual(LIMIT_MAXIMA.revocation_check_seconds);
    expect(parseConfig({ timeouts: { revocation_check_seconds: 5 } }, 'f').timeouts.revocation_check_seconds).toBe(5);
    expect(refusal({ timeouts: { revocation_check_seconds: 6 } })).toMatch(/^f\.toml: timeouts\.revocation_check_seconds: .*5/);
    expect(refusal({ timeouts: { revocation_check_seconds: 60 } })).not.toBeNull();
  });

  it('caps how long a gateway write may freeze the event loop', () => {
    expect(refusal({ store: { gateway_busy_timeout_ms: LIMIT_MAXIMA.gateway_busy_timeout_ms } })).toBeNull();
    expect(refusal({ store: { gateway_busy_timeout_ms: LIMIT_MAXIMA.gateway_busy_timeout_ms + 1 } })).toMatch(
      /^f\.toml: store\.gateway_busy_timeout_ms: /,
    );
  });

  it('sizes the refusal cache for every kind of repeated failure, and keeps it bounded (a few MiB)', () => {
    // Catches: a cache so small that a storm's distinct guesses evict the repeats it exists for,
    // or one that grows without bound.
    const { auth } = parseConfig({}, 'defaults');
    expect(auth.failed_login_cache_max_entries).toBe(10_000);
    expect(auth.failed_login_cache_max_entries).toBeLessThanOrEqual(auth.login_cache_max_entries);
  });
});

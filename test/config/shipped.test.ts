/**
 * What a fresh clone ships: config/mailgate.toml runs the gateway safely on
 * one machine (issue 3: loopback only, unprivileged ports, an upstream on
 * 127.0.0.1), holds no key the schema has dropped, and agrees with the
 * built-in defaults; docs/configuration.md documents every key; certs/ exists.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { describe, expect, it } from 'vitest';
import { loadConfig, parseConfig } from '../../src/config/load.js';
import { ROOT } from '../support/cli.js';

type Table = Record<string, unknown>;

const SHIPPED = path.join(ROOT, 'config/mailgate.toml');
const isTable = (value: unknown): value is Table => typeof value === 'object' && value !== null && !Array.isArray(value);

/** Every leaf of a TOML document as a dotted path; array-of-tables entries as `listen[].key`. */
function leafPaths(value: Table, prefix = ''): string[] {
  return Object.entries(value).flatMap(([key, child]) => {
    const here = prefix ? `${prefix}.${key}` : key;
    if (isTable(child)) return leafPaths(child, here);
    if (Array.isArray(child) && child.every(isTable)) return child.flatMap((entry) => leafPaths(entry, `${here}[]`));
    return [here];
  });
}

/** The built-in default at a leaf path; listeners are looked up in the first default listener. */
function lookup(root: Table, dotted: string): { found: boolean; value?: unknown } {
  let node: unknown = root;
  for (const part of dotted.split('.')) {
    const key = part.endsWith('[]') ? part.slice(0, -2) : part;
    if (!isTable(node) || !(key in node)) return { found: false };
    node = node[key];
    if (part.endsWith('[]')) node = (node as unknown[])[0];
  }
  return { found: true, value: node };
}

function isLoopback(host: string): boolean {
  const list = new net.BlockList();
  list.addSubnet('127.0.0.0', 8, 'ipv4');
  list.addAddress('::1', 'ipv6');
  return net.isIP(host) !== 0 && list.check(host, net.isIPv6(host) ? 'ipv6' : 'ipv4');
}

describe('the shipped config/mailgate.toml', () => {
  const raw = parseToml(readFileSync(SHIPPED, 'utf8')) as Table;
  const defaults = parseConfig({}, 'defaults') as unknown as Table;
  // Loaded per test, so the stale-key test below reports the key itself, not a load error.
  const shipped = () => loadConfig(SHIPPED, {}).config;

  it('listens only on loopback, on unprivileged ports', () => {
    const config = shipped();
    expect(config.listen.length).toBeGreaterThan(0);
    for (const listener of config.listen) {
      expect(isLoopback(listener.host), `${listener.protocol} on ${listener.host}`).toBe(true);
      expect(listener.port, `${listener.protocol} port`).toBeGreaterThan(1024);
    }
    // Both protocols, both TLS modes: `npm start` serves everything a mail program may try.
    expect(config.listen.map((l) => `${l.protocol}/${l.tls}`).sort()).toEqual(['imap/implicit', 'imap/starttls', 'pop3/implicit', 'pop3/starttls']);
  });

  it('points at an upstream on 127.0.0.1 whose certificate is verified', () => {
    const config = shipped();
    for (const upstream of [config.upstream.imap, config.upstream.pop3]) {
      expect(upstream.host).toBe('127.0.0.1');
      expect(upstream.verify).toBe(true);
      expect(upstream.tls).not.toBe('none');
    }
  });

  it('holds only keys the schema knows', () => {
    const stale = leafPaths(raw).filter((key) => !lookup(defaults, key).found);
    expect(stale).toEqual([]);
  });

  it('agrees with the built-in defaults, as docs/configuration.md says', () => {
    const differing = leafPaths(raw)
      .filter((key) => !key.startsWith('listen['))
      .filter((key) => JSON.stringify(lookup(raw, key).value) !== JSON.stringify(lookup(defaults, key).value));
    expect(differing).toEqual([]);
    expect(shipped().listen).toEqual(parseConfig({}, 'defaults').listen);
  });
});

describe('docs/configuration.md', () => {
  const docs = readFileSync(path.join(ROOT, 'docs/configuration.md'), 'utf8');
  const defaults = parseConfig({}, 'defaults') as unknown as Table;

  /** The text of the `## ...` section whose heading names `[name]` (or `[[name]]`). */
  function section(name: string): string {
    const parts = docs.split(/^## /m);
    const found = parts.find((p) => p.split('\n')[0]!.includes(`[${name}]`));
    if (!found) throw new Error(`no section for [${name}]`);
    return found;
  }

  /** How a default is written in the docs' Default column. */
  function written(value: unknown): string {
    return typeof value === 'string' ? `"${value}"` : JSON.stringify(value);
  }

  it('documents every key with its default', () => {
    const problems: string[] = [];
    const check = (sectionName: string, table: Table) => {
      const text = section(sectionName);
      for (const [key, value] of Object.entries(table)) {
        const row = new RegExp(`^\\| \`${key}\` \\| ([^|]*) \\|`, 'm').exec(text);
        if (!row) problems.push(`${sectionName}.${key}: not documented`);
        else if (!row[1]!.includes('(required)') && !row[1]!.includes(`\`${written(value)}\``)) {
          problems.push(`${sectionName}.${key}: documented default ${row[1]!.trim()}, actual ${written(value)}`);
        }
      }
    };
    for (const [name, value] of Object.entries(defaults)) {
      if (name === 'upstream') {
        for (const [sub, table] of Object.entries(value as Table)) check(`upstream.${sub}`, table as Table);
      } else if (name === 'listen') {
        check('listen', (value as Table[])[0]!);
      } else {
        check(name, value as Table);
      }
    }
    expect(problems).toEqual([]);
  });
});

describe('the layout of a fresh clone', () => {
  it('has a certs/ folder, kept in git by certs/.gitkeep', () => {
    expect(statSync(path.join(ROOT, 'certs')).isDirectory()).toBe(true);
    expect(existsSync(path.join(ROOT, 'certs/.gitkeep'))).toBe(true);
  });

  // Needs a git checkout (a fresh clone is one; an unpacked tarball is not).
  it.skipIf(!existsSync(path.join(ROOT, '.git')))('keeps the keys put in certs/ out of git, but not certs/.gitkeep', () => {
    const ignored = (file: string): boolean => {
      try {
        execFileSync('git', ['check-ignore', '-q', '--no-index', file], { cwd: ROOT, stdio: 'ignore' });
        return true;
      } catch (err) {
        if ((err as { status?: number }).status === 1) return false;
        throw err;
      }
    };
    expect(ignored('certs/.gitkeep')).toBe(false);
    for (const generated of ['certs/mailgate.key', 'certs/mailgate.crt', 'certs/fullchain.pem', 'certs/mailgate.p12']) {
      expect(ignored(generated), generated).toBe(true);
    }
  });
});

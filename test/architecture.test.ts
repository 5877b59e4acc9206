/**
 * The shape docs/architecture.md promises, checked on the sources: layers
 * call only downwards, only src/store/ knows the database engine, and the
 * file map names every source file.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROOT } from './support/cli.js';

/** Higher calls lower; equal ranks do not call each other (a folder may call itself). */
const RANK: Record<string, number> = {
  'errors.ts': 0,
  types: 0,
  config: 1,
  log: 1,
  protocols: 2,
  store: 2,
  upstream: 3,
  auth: 4,
  session: 5,
  // The self-service page: a front door beside the mail sessions, on the same services.
  web: 5,
  server: 6,
  cli: 7,
};

function sources(dir = path.join(ROOT, 'src')): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    return entry.isDirectory() ? sources(full) : entry.name.endsWith('.ts') ? [full] : [];
  });
}

/** The layer of a file: its first folder under src/ (or errors.ts). */
function layer(file: string): string {
  return path.relative(path.join(ROOT, 'src'), file).split(path.sep)[0]!;
}

function imports(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  return [...text.matchAll(/^import [^;]*? from '(\.[^']+)';$/gm)].map((m) => path.resolve(path.dirname(file), m[1]!.replace(/\.js$/, '.ts')));
}

describe('architecture', () => {
  it('no layer imports a layer above it, and same-rank layers do not import each other', () => {
    // Catches: a session importing the server's metrics, the store importing the policy...
    const wrong: string[] = [];
    for (const file of sources()) {
      const from = layer(file);
      for (const target of imports(file)) {
        const to = layer(target);
        if (to === from) continue;
        if (!(to in RANK) || !(from in RANK)) wrong.push(`${path.relative(ROOT, file)} -> ${path.relative(ROOT, target)} (unknown layer)`);
        else if (RANK[to]! >= RANK[from]!) wrong.push(`${path.relative(ROOT, file)} (${from}) imports ${path.relative(ROOT, target)} (${to})`);
      }
    }
    expect(wrong).toEqual([]);
  });

  it('only src/store/ knows the database: no driver (better-sqlite3, pg), no SQL statement, no pragma elsewhere', () => {
    const leaks = sources()
      .filter((file) => !path.relative(ROOT, file).startsWith(`src${path.sep}store${path.sep}`))
      .filter((file) => /better-sqlite3|from 'pg'|PRAGMA|\.prepare\(|SELECT .* FROM|INSERT INTO|DELETE FROM|UPDATE [a-z_]+ SET|LISTEN |NOTIFY /.test(readFileSync(file, 'utf8')))
      .map((file) => path.relative(ROOT, file));
    expect(leaks).toEqual([]);
  });

  it('docs/architecture.md has a line for every source file, and none for a file that is gone', () => {
    const doc = readFileSync(path.join(ROOT, 'docs/architecture.md'), 'utf8');
    const listed = new Set([...doc.matchAll(/^- `(src\/[^`]+\.ts)`/gm)].map((m) => m[1]!));
    const actual = new Set(sources().map((file) => path.relative(ROOT, file).split(path.sep).join('/')));
    expect([...actual].filter((file) => !listed.has(file))).toEqual([]);
    expect([...listed].filter((file) => !actual.has(file))).toEqual([]);
  });
});

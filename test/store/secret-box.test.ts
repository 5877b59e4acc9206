import { statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadOrCreateKey, open, seal } from '../../src/store/secret-box.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';

let dir = '';
afterEach(async () => {
  if (dir) await removeTempDir(dir);
  dir = '';
});

describe('secret box', () => {
  it('creates a 32-byte 0600 key once and reads it back', async () => {
    dir = await makeTempDir('key');
    const file = path.join(dir, 'sub', 'mailgate.key');
    const key = loadOrCreateKey(file);
    expect(key.length).toBe(32);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(loadOrCreateKey(file).equals(key)).toBe(true);
  });

  it('refuses a key file of the wrong size', async () => {
    dir = await makeTempDir('key');
    const file = path.join(dir, 'bad.key');
    writeFileSync(file, 'too short');
    expect(() => loadOrCreateKey(file)).toThrow(/exactly 32 bytes/);
  });

  it('round-trips, and fails with another key, another account, or a flipped bit', async () => {
    dir = await makeTempDir('key');
    const key = loadOrCreateKey(path.join(dir, 'a.key'));
    const other = loadOrCreateKey(path.join(dir, 'b.key'));
    const sealed = seal(key, Buffer.from('JBSWY3DPEHPK3PXPJBSWY3DP'), 'alice');
    expect(sealed.includes(Buffer.from('JBSWY3DP'))).toBe(false);
    expect(open(key, sealed, 'alice').toString()).toBe('JBSWY3DPEHPK3PXPJBSWY3DP');
    expect(() => open(other, sealed, 'alice')).toThrow();
    expect(() => open(key, sealed, 'bob')).toThrow();
    const tampered = Buffer.from(sealed);
    tampered[tampered.length - 20]! ^= 1;
    expect(() => open(key, tampered, 'alice')).toThrow();
  });
});

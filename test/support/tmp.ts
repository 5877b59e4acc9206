/**
 * Temporary directories for tests.
 *
 * Every directory is created directly under os.tmpdir() with mkdtemp (mode 0700,
 * random suffix), so parallel vitest workers never collide. removeTempDir only
 * ever deletes a direct child of os.tmpdir() whose name carries our marker, so a
 * bad argument (e.g. '' or '/') can never wipe something else.
 */
import { mkdtemp, realpath, rm, lstat } from 'node:fs/promises';
import { realpathSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** Every directory made here has a name starting with this marker. */
export const TEMP_DIR_MARKER = 'mg-';

function tmpRoot(): string {
  // Resolve symlinks (e.g. macOS /var -> /private/var) so containment checks are exact.
  return realpathSync(os.tmpdir());
}

function sanitize(prefix: string): string {
  const cleaned = prefix.replace(/[^A-Za-z0-9._-]/g, '-').replace(/^[.-]+/, '').slice(0, 24);
  return cleaned.length > 0 ? cleaned : 'tmp';
}

/**
 * Create a fresh private (0700) directory under os.tmpdir(), named `mg-<prefix>-XXXXXX`.
 * Names are kept short on purpose: Dovecot puts unix sockets inside, and
 * sun_path is limited to 108 bytes.
 */
export async function makeTempDir(prefix: string): Promise<string> {
  const base = path.join(tmpRoot(), `${TEMP_DIR_MARKER}${sanitize(prefix)}-`);
  return mkdtemp(base);
}

/**
 * Recursively delete a directory made by makeTempDir. Idempotent (a missing
 * directory is fine). Refuses (throws) for anything that is not a direct child
 * of os.tmpdir() carrying our name marker, or that is a symlink.
 */
export async function removeTempDir(dir: string): Promise<void> {
  if (typeof dir !== 'string' || dir.length === 0 || !path.isAbsolute(dir)) {
    throw new Error(`removeTempDir: refusing non-absolute path ${JSON.stringify(dir)}`);
  }
  const root = tmpRoot();
  const resolved = path.resolve(dir);
  let real: string;
  try {
    // Resolve symlinks in the parent chain only; the leaf itself must not be a symlink.
    real = path.join(await realpath(path.dirname(resolved)), path.basename(resolved));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (path.dirname(real) !== root || !path.basename(real).startsWith(TEMP_DIR_MARKER)) {
    throw new Error(`removeTempDir: refusing to delete ${real}: not a ${TEMP_DIR_MARKER}* directory directly under ${root}`);
  }
  try {
    const st = await lstat(real);
    if (!st.isDirectory()) {
      throw new Error(`removeTempDir: refusing to delete ${real}: not a directory`);
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  await rm(real, { recursive: true, force: true, maxRetries: 5, retryDelay: 50 });
}

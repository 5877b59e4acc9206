/**
 * What opening the store for the first time creates: the database with its
 * -wal and -shm files, the key file, and their folders.
 *
 * A gateway start that fails after the store was opened (a port in use, say)
 * removes what it created, so that the operator's next start is a first start
 * again, not one that quietly finds an empty store and a key nobody meant to
 * make. Only what did not exist before is removed, by unlinking: a database
 * that was there is never touched, and neither is a -wal or -shm file that
 * belongs to it (another process may have it open).
 */
import { chownSync, lstatSync, rmdirSync, statSync, unlinkSync } from 'node:fs';
import path from 'node:path';

export interface StoreFootprint {
  /** Removes the files and empty folders that were missing when the footprint was taken; returns the paths removed. */
  removeCreated(): string[];
  /**
   * Run as root: gives what this open created to the owner of the folder it
   * was created in (the service user's /var/lib/mailgate), so that
   * `sudo mailgate account add` on a new store leaves one the service can
   * open. Returns the paths changed. An existing store keeps its owner by
   * itself: SQLite gives the -wal and -shm it creates as root the database's owner.
   */
  adoptFolderOwner(): string[];
}

/** Takes note of which store files and folders exist now, before the store is opened. */
export function storeFootprint(options: { path: string; keyFile: string }): StoreFootprint {
  const databaseIsNew = !exists(options.path);
  // The -wal and -shm of an existing database are its own: only a new database's are ours to remove.
  const newFiles = [
    ...(databaseIsNew ? [options.path, `${options.path}-wal`, `${options.path}-shm`] : []),
    ...(exists(options.keyFile) ? [] : [options.keyFile]),
  ];
  const newFolders = [...new Set([...missingFolders(options.path), ...missingFolders(options.keyFile)])];
  // Taken now, before anything is created: the owner of the nearest folder that already exists.
  const created = [...newFiles, ...newFolders].map((item) => ({ item, owner: existingFolderOwner(item) }));
  return {
    adoptFolderOwner() {
      if (process.geteuid?.() !== 0) return [];
      const changed: string[] = [];
      for (const { item, owner } of created) {
        if (owner && attempt(() => chownSync(item, owner.uid, owner.gid))) changed.push(item);
      }
      return changed;
    },
    removeCreated() {
      const removed: string[] = [];
      for (const file of newFiles) if (attempt(() => unlinkSync(file))) removed.push(file);
      // Deepest first; rmdir only removes a folder that is empty, so nothing else is lost.
      for (const folder of newFolders.sort((a, b) => b.length - a.length)) if (attempt(() => rmdirSync(folder))) removed.push(folder);
      return removed;
    },
  };
}

/** The folders above `file` that do not exist yet, deepest first. */
function missingFolders(file: string): string[] {
  const missing: string[] = [];
  for (let dir = path.dirname(path.resolve(file)); !exists(dir); dir = path.dirname(dir)) {
    missing.push(dir);
    if (path.dirname(dir) === dir) break;
  }
  return missing;
}

/** The owner of the nearest folder above `file` that exists now. */
function existingFolderOwner(file: string): { uid: number; gid: number } | null {
  for (let dir = path.dirname(path.resolve(file)); ; dir = path.dirname(dir)) {
    try {
      const { uid, gid } = statSync(dir);
      return { uid, gid };
    } catch {
      if (path.dirname(dir) === dir) return null;
    }
  }
}

function exists(file: string): boolean {
  try {
    lstatSync(file);
    return true;
  } catch (err) {
    // A file we cannot even look at is treated as existing: never remove what might be someone's.
    return (err as NodeJS.ErrnoException).code !== 'ENOENT';
  }
}

function attempt(remove: () => void): boolean {
  try {
    remove();
    return true;
  } catch {
    // Gone already, or not ours to remove (a folder someone filled meanwhile): leave it.
    return false;
  }
}

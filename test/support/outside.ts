/**
 * Touching a store's files the way other programs do, from other processes.
 *
 * The test process runs gateways and holds SQLite connections. On POSIX,
 * closing any descriptor of a file drops every advisory lock the process holds
 * on it (SQLite: "How To Corrupt An SQLite Database File", 2.2), so a test
 * that read or wrote a live database with fs.* would itself strip the
 * gateway's locks. Every raw read or write of a database (or its -wal/-shm)
 * goes through a child process here: cat, cp, truncate, dd.
 *
 * Also: which processes still hold deleted store files open, and which
 * advisory locks a process holds on a file, from /proc.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';

const run = (cmd: string, args: string[], input?: Buffer | string): Buffer =>
  execFileSync(cmd, args, { maxBuffer: 256 * 1024 * 1024, stdio: ['pipe', 'pipe', 'pipe'], ...(input === undefined ? {} : { input }) });

/** The file's bytes, read by `cat`. */
export function outsideRead(file: string): Buffer {
  return run('cat', ['--', file]);
}

/** `cp SRC DST`: writes DST in place when it exists (same inode), as a restore by cp does. */
export function outsideCopy(src: string, dst: string): void {
  run('cp', ['--', src, dst]);
}

/** `truncate -s 0`: the file keeps its inode, its content is gone. */
export function outsideTruncate(file: string): void {
  run('truncate', ['-s', '0', '--', file]);
}

/** Overwrites `bytes` bytes from offset `at` in place with random data (`dd conv=notrunc`). */
export function outsideScribble(file: string, bytes: number, at = 0): void {
  run('dd', ['if=/dev/urandom', `of=${file}`, `bs=${bytes}`, 'count=1', `seek=${at}`, 'oflag=seek_bytes', 'conv=notrunc', 'status=none']);
}

/** Replaces the file's content with `data` (truncating write by `cat`, same inode if it exists). */
export function outsideWrite(file: string, data: Buffer | string): void {
  run('sh', ['-c', 'cat > "$1"', 'sh', file], data);
}

/** Debian's sqlite3 shell, when installed (scripts/install-test-deps.sh installs it). */
export const SQLITE3_CLI = ['/usr/bin/sqlite3', '/usr/local/bin/sqlite3'].find((p) => existsSync(p)) ?? null;

export interface OpenDeletedFile {
  pid: number;
  target: string;
}

/**
 * Every descriptor, in any process this user can see, that points at one of
 * the store's files after it was deleted ("/path/mailgate.db-wal (deleted)").
 * Processes and descriptors come and go during the scan (unrelated sockets
 * close, clients exit): those are skipped, not errors.
 */
export function openDeletedStoreFiles(dbPath: string): OpenDeletedFile[] {
  const names = new Set([dbPath, `${dbPath}-wal`, `${dbPath}-shm`, `${dbPath}-journal`].map((n) => `${n} (deleted)`));
  const found: OpenDeletedFile[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${entry}/fd`);
    } catch {
      continue; // gone, or not ours to look at
    }
    for (const fd of fds) {
      let target: string;
      try {
        target = readlinkSync(`/proc/${entry}/fd/${fd}`);
      } catch {
        continue;
      }
      if (names.has(target)) found.push({ pid: Number(entry), target });
    }
  }
  return found;
}

/** SQLite's unix VFS holds a shared lock as a READ lock on these bytes of the database file (WAL mode: for as long as the connection is open). */
export const SQLITE_SHARED_LOCK = { kind: 'READ', start: 1_073_741_826, end: 1_073_742_335 } as const;

export interface PosixLock {
  kind: 'READ' | 'WRITE';
  start: number;
  end: number | 'EOF';
}

/** The POSIX advisory locks `pid` holds on `file`'s inode, from /proc/locks (blocked waiters excluded). */
export function posixLocksOf(pid: number, file: string): PosixLock[] {
  const ino = statSync(file, { bigint: true }).ino.toString();
  const locks: PosixLock[] = [];
  for (const line of readFileSync('/proc/locks', 'utf8').split('\n')) {
    const m = /^\d+:\s+POSIX\s+\S+\s+(READ|WRITE)\s+(\d+)\s+[0-9a-f]+:[0-9a-f]+:(\d+)\s+(\d+)\s+(\d+|EOF)\s*$/i.exec(line);
    if (!m || Number(m[2]) !== pid || m[3] !== ino) continue;
    locks.push({ kind: m[1] as PosixLock['kind'], start: Number(m[4]), end: m[5] === 'EOF' ? 'EOF' : Number(m[5]) });
  }
  return locks;
}

/**
 * WAL checkpoints off the event loop.
 *
 * better-sqlite3 is synchronous, and SQLite's automatic checkpoint runs inside
 * whichever commit crosses the WAL threshold: with `synchronous = NORMAL` that
 * commit also pays the fsyncs, freezing every session for tens of
 * milliseconds now and then (more often during a storm of failed logins,
 * which each write a few rows). The gateway therefore turns automatic
 * checkpoints off on its own connection and lets this worker thread, with a
 * connection of its own, checkpoint in the background.
 *
 * If the worker cannot run, the gateway falls back to automatic checkpoints,
 * so the WAL never grows without bound.
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import type { Logger } from '../../log/logger.js';

// Plain CommonJS run with `eval`, so it works from dist/ and from the
// TypeScript sources alike (tests) without a build step for the worker.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { statSync } = require('node:fs');
const Database = require(workerData.driver);
let db = null;
let identity = null;
function tick() {
  try {
    const st = statSync(workerData.path);
    const now = st.dev + ':' + st.ino;
    if (db && now !== identity) { db.close(); db = null; }
    if (!db) {
      db = new Database(workerData.path, { fileMustExist: true, timeout: 0 });
      identity = now;
    }
    // PASSIVE never waits for readers or writers: it copies what it can.
    db.pragma('wal_checkpoint(PASSIVE)');
  } catch (err) {
    if (db) { try { db.close(); } catch {} db = null; }
  }
}
const timer = setInterval(tick, workerData.intervalMs);
parentPort.on('message', (message) => {
  if (message !== 'stop') return;
  clearInterval(timer);
  tick();
  if (db) db.close();
  parentPort.close();
});
`;

export class Checkpointer {
  private worker: Worker | null = null;

  constructor(
    private readonly path: string,
    private readonly intervalMs: number,
    private readonly log: Logger,
    /** Called if the worker dies: the caller turns automatic checkpoints back on. */
    private readonly onFailure: () => void,
  ) {}

  start(): void {
    const driver = createRequire(import.meta.url).resolve('better-sqlite3');
    const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { path: this.path, intervalMs: this.intervalMs, driver } });
    worker.unref();
    worker.on('error', (err) => {
      this.log.warn({ err: err.message }, 'the checkpoint worker failed; falling back to automatic checkpoints');
      this.worker = null;
      this.onFailure();
    });
    this.worker = worker;
  }

  /** Runs a last checkpoint and stops the worker. */
  async stop(): Promise<void> {
    const worker = this.worker;
    this.worker = null;
    if (!worker) return;
    // Keep the process alive until the worker has finished its last checkpoint
    // (it is unref'd while running, so it never holds a shutdown up).
    worker.ref();
    const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    worker.postMessage('stop');
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([exited, new Promise<void>((resolve) => (timer = setTimeout(resolve, 2000)))]);
    clearTimeout(timer);
    await worker.terminate();
  }
}

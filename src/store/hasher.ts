/**
 * argon2id hashing of app passwords, with bounded concurrency.
 *
 * node-argon2 already runs each hash on the libuv thread pool, so the event loop
 * never computes one. What it does not do is limit how many run at once: a flood
 * of wrong passwords would fill the pool (which DNS and file I/O share) and
 * every correct login would wait behind it. So at most `concurrency` run, a
 * bounded queue waits, and past that attempts fail fast as temporarily busy.
 */
import { availableParallelism } from 'node:os';
import { randomBytes } from 'node:crypto';
import argon2 from 'argon2';
import { LIMIT_DEFAULTS } from '../config/limits.js';
import { ErrorCodes, MailgateError } from '../errors.js';

export interface HasherOptions {
  memoryKib: number;
  iterations: number;
  parallelism: number;
  /** How many hashes may run at once; 0 means one per CPU core but one, and at least one. */
  concurrency?: number;
  /** How many may wait for a slot before new attempts are refused. */
  maxQueue?: number;
}

export interface HasherStats {
  running: number;
  queued: number;
  /** Verifications started since creation (tests count them). */
  verifications: number;
}

export class PasswordHasher {
  private readonly concurrency: number;
  private readonly maxQueue: number;
  private running = 0;
  private readonly waiting: Array<() => void> = [];
  private dummyHash: Promise<string> | null = null;
  private verifications = 0;

  constructor(private readonly options: HasherOptions) {
    // One core is left to the event loop: during a storm of wrong passwords the
    // sessions, TLS and correct logins must still get CPU. And one thread of
    // libuv's pool is left to DNS and file I/O, which share it with argon2.
    const poolThreads = Number(process.env.UV_THREADPOOL_SIZE) || 4;
    this.concurrency =
      options.concurrency && options.concurrency > 0 ? options.concurrency : Math.max(1, Math.min(availableParallelism() - 1, poolThreads - 1));
    this.maxQueue = options.maxQueue ?? LIMIT_DEFAULTS.hash_queue;
  }

  get stats(): HasherStats {
    return { running: this.running, queued: this.waiting.length, verifications: this.verifications };
  }

  /**
   * False when a verification started now would be refused as busy: every
   * slot runs and the queue is full. Asked before anything about an account is
   * read, so that a busy hasher turns every attempt away alike.
   */
  hasCapacity(): boolean {
    return this.running < this.concurrency || this.waiting.length < this.maxQueue;
  }

  hash(password: string): Promise<string> {
    return this.withSlot(() =>
      argon2.hash(password, {
        type: argon2.argon2id,
        memoryCost: this.options.memoryKib,
        timeCost: this.options.iterations,
        parallelism: this.options.parallelism,
      }),
    );
  }

  /** True when `password` matches `hash`. A malformed hash counts as a mismatch. */
  verify(hash: string, password: string): Promise<boolean> {
    return this.withSlot(async () => {
      this.verifications += 1;
      try {
        return await argon2.verify(hash, password);
      } catch {
        return false;
      }
    });
  }

  /**
   * Spends the same work as a real verification and always fails. Used when
   * there is nothing to compare against (unknown account, no such app password)
   * so that response time does not tell an attacker which case they hit.
   */
  async verifyDummy(password: string): Promise<false> {
    this.dummyHash ??= this.hash(randomBytes(16).toString('hex'));
    let dummy: string;
    try {
      dummy = await this.dummyHash;
    } catch (err) {
      // Creating it failed (capacity exhausted, say): try again next time
      // instead of failing every later dummy verification without hashing.
      this.dummyHash = null;
      throw err;
    }
    await this.verify(dummy, password);
    return false;
  }

  private async withSlot<T>(work: () => Promise<T>): Promise<T> {
    if (this.running >= this.concurrency) {
      if (this.waiting.length >= this.maxQueue) {
        throw new MailgateError(ErrorCodes.HASH_BUSY, 'password hashing capacity is exhausted');
      }
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    } else {
      this.running += 1;
    }
    try {
      return await work();
    } finally {
      const next = this.waiting.shift();
      // Hand the slot straight to the next waiter, so `running` never dips and
      // lets a newcomer jump the queue.
      if (next) next();
      else this.running -= 1;
    }
  }
}

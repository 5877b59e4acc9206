/**
 * The revocation watcher on its own, over a real store (each engine) and
 * stand-in sessions: which logged-in sessions it ends, with which farewell,
 * and when it looks at all.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log/logger.js';
import { SessionRegistry, type SessionAuth, type TerminationReason, type TrackedSession } from '../../src/session/registry.js';
import { RevocationWatcher } from '../../src/session/revocation-watcher.js';
import { enableTotpVia, ENGINES, makeEngineStore, useEngine, type EngineStore } from '../support/store.js';
import { waitUntil } from '../support/timing.js';

let registry: SessionRegistry;

class FakeSession implements TrackedSession {
  readonly protocol = 'imap' as const;
  readonly clientKey = '127.0.0.1';
  readonly client = { address: '127.0.0.1', port: 40000 };
  ended: TerminationReason | null = null;
  constructor(
    readonly id: string,
    readonly auth: SessionAuth,
  ) {}
  terminate(reason: TerminationReason): void {
    this.ended = reason;
    registry.remove(this);
  }
}

/** A session logged in through passthrough for a name mailgate did not know. */
function passthrough(id: string, username: string): FakeSession {
  const session = new FakeSession(id, { accountId: null, accountCreatedAt: null, username, appPasswordId: null, appPasswordCreatedAt: null, appPasswordName: null, mode: 'upstream-password', loginAt: Date.now() - 60_000 });
  registry.add(session);
  registry.markAuthenticated(session);
  return session;
}

describe.each(ENGINES)('the revocation watcher (%s)', (engine) => {
useEngine(engine);
let t: EngineStore;

function watcher(policy: 'passthrough' | 'reject' = 'passthrough'): RevocationWatcher {
  return new RevocationWatcher(t.api, registry, silentLogger(), 1000, { main_password_without_2fa: policy });
}

beforeEach(async () => {
  t = await makeEngineStore(engine);
  registry = new SessionRegistry();
});
afterEach(async () => {
  await t.cleanup();
});

describe('sessions passed through for names mailgate did not know', () => {
  it('are ended once the name is added with two-step verification on', async () => {
    // Catches: a watcher that skips sessions without an account id, so a user who turns 2FA on keeps
    // every session opened with the main password.
    const w = watcher();
    const carol = passthrough('s1', 'Carol');
    const dave = passthrough('s2', 'dave');
    await w.tick();
    expect(carol.ended).toBeNull();
    await t.api.accounts.add('carol');
    w.changed();
    await w.tick();
    expect(carol.ended).toBeNull(); // added without 2FA, main passwords allowed: nothing changes
    await enableTotpVia(t.api, 'carol');
    w.changed();
    await w.tick();
    expect(carol.ended).toBe('two-factor-enabled');
    expect(dave.ended).toBeNull();
  });

  it('are ended once the name is added while main passwords need 2FA-less accounts to use app passwords', async () => {
    const w = watcher('reject');
    const erin = passthrough('s3', 'erin');
    await t.api.accounts.add('erin');
    w.changed();
    await w.tick();
    expect(erin.ended).toBe('app-password-required');
  });

  it('are ended once the name is blocked', async () => {
    // Catches: a block (the name's failures passed the threshold) that leaves the name's
    // passthrough sessions open, so the attacker who got in stays in.
    const w = watcher();
    const frank = passthrough('s4', 'Frank');
    const other = passthrough('s5', 'gina');
    await w.tick();
    await t.api.penalties.recordFailure('account', 'frank', { windowMs: 60_000, blockAfter: 1, blockMs: 60_000 });
    w.changed();
    await w.tick();
    expect(frank.ended).toBe('blocked');
    expect(other.ended).toBeNull();
  });
});

describe('when it looks', () => {
  it("sees this process's own commits through the store's announcements, at once", async () => {
    // Catches: relying on data_version alone, which does not move for the connection's own commits
    // (a block started by this process, a revocation made by the web page in this process).
    const w = watcher();
    w.start();
    try {
      const henry = passthrough('s6', 'henry');
      await w.tick(); // first look: nothing to do, remembers the change token
      // A long-gone login: it is not "fresh" any more, so only a change makes the watcher look.
      henry.auth.loginAt = 0;
      await w.tick();
      // Committed without the store's announcement (SQLite: on the same connection): invisible to the token.
      const now = Date.now();
      await t.rows('INSERT INTO penalties (kind, key, failures, repeats, window_start, last_failure, blocked_until) VALUES (?, ?, 1, 0, ?, ?, ?)', ['account', 'henry', now, now, now + 60_000]);
      await w.tick();
      expect(henry.ended).toBeNull();
      // Any change made through the store is announced, and the watcher looks at once (no tick).
      await t.api.penalties.recordFailure('account', 'other', { windowMs: 60_000, blockAfter: 1, blockMs: 60_000 });
      await waitUntil(() => henry.ended, "the watcher to end the blocked name's session", 1_000);
      expect(henry.ended).toBe('blocked');
    } finally {
      w.stop();
    }
  });

  it('tells a session to close once, though it stays registered until its socket has closed', async () => {
    // Catches: a pass right after the one that ended a session (a second change, a poll) ending it again:
    // a second farewell and a second "closing a session" line.
    const w = watcher();
    const jane = passthrough('s8', 'jane');
    let told = 0;
    jane.terminate = () => void (told += 1);
    await t.api.penalties.recordFailure('account', 'jane', { windowMs: 60_000, blockAfter: 1, blockMs: 60_000 });
    w.changed();
    await w.tick();
    w.changed();
    await w.tick();
    expect(told).toBe(1);
  });

  it('notices commits of another connection (another process) by itself', async () => {
    const w = watcher();
    const ivan = passthrough('s7', 'ivan');
    ivan.auth.loginAt = 0;
    await w.tick();
    const other = await t.open();
    await other.accounts.add('ivan');
    await enableTotpVia(other, 'ivan');
    await w.tick();
    expect(ivan.ended).toBe('two-factor-enabled');
  });
});
});

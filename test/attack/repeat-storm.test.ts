/**
 * A storm of one repeated wrong password (issue 10, §3), bounded in time and
 * count: several addresses, several connections each, all sending the same
 * wrong password for an unknown name, an account with two-step verification
 * and an account without it (checked by the upstream), against a real
 * Dovecot behind a real mailgate whose hasher is small (one slot, a short
 * queue) so that any hashing the storm costs shows.
 *
 * Before the fix every repeat ran argon2 (real or dummy): the queue sat full,
 * a user's never-used app password got `NO [UNAVAILABLE]`, and the answers
 * differed by account type (an instant "unavailable" for some, a refusal for
 * others). Now a repeat costs no argon2 and no upstream check, repeats count
 * per address until it is blocked, every kind of account gets the same
 * answers, and the log gets summaries instead of a line per attempt.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { FIXED_LIMITS } from '../../src/config/limits.js';
import { imapsLogin } from '../support/attack.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { attemptsLogged, logLines, startGateway, type GatewayHandle } from '../support/gateway.js';
import { imaps, taggedLine } from '../support/imap-client.js';
import { enableTotp } from '../support/store.js';
import { waitUntil } from '../support/timing.js';

const ADDRESSES = Array.from({ length: 8 }, (_, i) => `127.0.3.${i + 1}`);
const CONNECTIONS_PER_ADDRESS = 3;
/** Attempts per storming address: 576 in all, over twice the most lines the summarising may write (8 × 27). */
const ATTEMPTS_PER_ADDRESS = 72;
const REPEAT_BLOCK_AFTER = 12;
const WRONG = 'same-wrong-password';
/** One name per kind of account: unknown to mailgate, 2FA on (refused locally), no 2FA (checked by Dovecot). */
const TARGETS = { unknown: 'ghost1', twoFactor: 'tfa', plain: 'plain' } as const;
type Kind = keyof typeof TARGETS;

let dc: DovecotHandle;
let gw: GatewayHandle;
let ownerPassword: string;

beforeAll(async () => {
  dc = await startDovecot({ users: ['tfa', 'plain', 'owner'].map((name) => ({ name, password: `${name}-upstream-pw` })) });
  gw = await startGateway(dc, {
    // argon2 costly enough to queue, and a hasher of one slot and a queue of four.
    argon2: { memoryKib: 8 * 1024, iterations: 2, parallelism: 1 },
    config: {
      auth: { hash_concurrency: 1, hash_queue: 4 },
      limits: {
        failure_delay_base_ms: 20,
        failure_delay_max_ms: 40,
        ip_block_after: 1000,
        account_block_after: 1000,
        ip_repeat_block_after: REPEAT_BLOCK_AFTER,
        block_seconds: 60,
        max_connections_per_ip: 50,
        max_concurrent_logins_per_ip: 4,
      },
    },
  });
  for (const user of ['tfa', 'plain', 'owner']) gw.store.accounts.add(user);
  enableTotp(gw.store, 'tfa');
  enableTotp(gw.store, 'owner');
  // Created before the storm and never used: its first login must run argon2 during the storm.
  ownerPassword = (await gw.store.appPasswords.create('owner', { name: 'new phone' })).password;
});

afterAll(async () => {
  await gw?.stop();
  await dc?.stop();
});

interface Answer {
  kind: Kind;
  line: string;
}

/**
 * One storming connection after another from `from`, cycling through the
 * kinds, until the address's `quota` of attempts is used (a count, not a
 * time: a busy machine must not make fewer attempts than the log bounds
 * below assume).
 */
async function storm(from: string, quota: { left: number }, answers: Answer[]): Promise<void> {
  const kinds = Object.keys(TARGETS) as Kind[];
  let n = 0;
  while (quota.left > 0) {
    const c = await imaps(gw, { from, timeoutMs: 10_000 });
    try {
      for (let i = 0; i < 3 && quota.left > 0; i++) {
        quota.left -= 1;
        const kind = kinds[n++ % kinds.length]!;
        const tag = `s${n}`;
        answers.push({ kind, line: taggedLine(await c.command(tag, `LOGIN ${TARGETS[kind]} ${WRONG}`), tag).slice(tag.length + 1) });
      }
    } catch {
      // Closed after its third failure while a command was in flight: reconnect.
    } finally {
      c.destroy();
    }
  }
}

it('a repeated wrong password costs no argon2, blocks each address, answers every kind of account alike, and lets a new app password in', async () => {
  // Catches: repeats hashed every time (the queue fills, new app passwords get NO [UNAVAILABLE]);
  // "hash busy" answered differently by account type (an enumeration oracle); repeats free forever
  // for an address; a log line per attempt.
  const hashesBefore = gw.hasher.stats.verifications;
  const answers: Answer[] = [];
  const storming = ADDRESSES.flatMap((from) => {
    const quota = { left: ATTEMPTS_PER_ADDRESS };
    return Array.from({ length: CONNECTIONS_PER_ADDRESS }, () => storm(from, quota, answers));
  });

  // In the middle of the storm, the owner's never-used app password, from a clean address.
  await waitUntil(() => answers.length >= (ADDRESSES.length * ATTEMPTS_PER_ADDRESS) / 4, 'the storm to be under way', 30_000);
  const owner = await imapsLogin(gw, 'owner', ownerPassword, { from: '127.0.4.1' });
  owner.c.destroy();
  await Promise.all(storming);

  expect(taggedLine(owner.answer, 'L1')).toMatch(/^L1 OK /);
  expect(owner.ms).toBeLessThan(3_000);

  // argon2 ran for the first refusal of each name (the unknown one and the 2FA one; the plain
  // account's password is checked by Dovecot) and for the owner's login: nothing for the repeats.
  expect(answers.length).toBeGreaterThanOrEqual(ADDRESSES.length * ATTEMPTS_PER_ADDRESS - ADDRESSES.length * CONNECTIONS_PER_ADDRESS);
  expect(gw.hasher.stats.verifications - hashesBefore).toBeLessThanOrEqual(3);
  expect(attemptsLogged(gw, 'login temporarily failed', { reason: 'hash-busy' })).toBe(0);

  // The same answers for every kind of account: refused, then (once the address is blocked) unavailable.
  const FAILED = 'NO [AUTHENTICATIONFAILED] Authentication failed.';
  const UNAVAILABLE = 'NO [UNAVAILABLE] The mail service is temporarily unavailable; try again in a few minutes.';
  for (const kind of Object.keys(TARGETS) as Kind[]) {
    expect(new Set(answers.filter((a) => a.kind === kind).map((a) => a.line)), kind).toEqual(new Set([FAILED, UNAVAILABLE]));
  }

  // Repeats counted per address: every storming address got blocked on its repeats.
  const blocks = logLines(gw, 'temporary block started').filter((l) => l.kind === 'ip');
  expect(new Set(blocks.map((l) => l.key))).toEqual(new Set(ADDRESSES));
  for (const block of blocks) expect(block.repeats).toBeGreaterThanOrEqual(REPEAT_BLOCK_AFTER);

  // Every address reaches the log (fail2ban), in a few lines per kind of line: per address, user,
  // reason and message at most the burst and one summary per period (the storm touches at most two),
  // so far fewer lines than attempts.
  const lines = [...logLines(gw, 'login failed'), ...logLines(gw, 'login blocked')].filter((l) => ADDRESSES.includes(String(l.clientIp)));
  expect(new Set(lines.map((l) => l.clientIp))).toEqual(new Set(ADDRESSES));
  const perGroup = new Map<string, number>();
  for (const l of lines) {
    const group = [l.msg, l.clientIp, l.user, l.reason, l.blockedBy, l.repeat].join(' ');
    perGroup.set(group, (perGroup.get(group) ?? 0) + 1);
  }
  const bound = 2 * (FIXED_LIMITS.repeated_failure_log_burst + 1);
  for (const [group, count] of perGroup) expect(count, group).toBeLessThanOrEqual(bound);
  expect(lines.length).toBeLessThan(answers.length / 2);
  expect(attemptsLogged(gw, 'login failed') + attemptsLogged(gw, 'login blocked')).toBeGreaterThanOrEqual(answers.length);
});

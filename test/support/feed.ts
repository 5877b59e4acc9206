/**
 * Chunkings of one input for parser tests: a parser must produce the same
 * events however the network happens to cut the bytes. Also the random input
 * of the fuzz tests and its random cuts.
 *
 * Protocol neutral: shared by the IMAP and POP3 parser tests.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

export interface SplitPlan {
  label: string;
  chunks: Buffer[];
}

/** The whole input, every two-chunk split, and one byte at a time. Strings are UTF-8 encoded. */
export function splitPlans(input: Buffer | string): SplitPlan[] {
  const bytes = typeof input === 'string' ? Buffer.from(input, 'utf8') : input;
  const plans: SplitPlan[] = [{ label: 'whole', chunks: [bytes] }];
  for (let at = 1; at < bytes.length; at++) {
    // Copies, so a parser that wrongly keeps a reference to a chunk cannot pass by sharing memory with the input.
    plans.push({ label: `split@${at}`, chunks: [Buffer.from(bytes.subarray(0, at)), Buffer.from(bytes.subarray(at))] });
  }
  const single: Buffer[] = [];
  for (let i = 0; i < bytes.length; i++) single.push(Buffer.from(bytes.subarray(i, i + 1)));
  plans.push({ label: 'bytewise', chunks: single });
  return plans;
}

/**
 * Run `run` once per plan and return the labelled results; the caller asserts
 * they are all equal (and equal to what it expects).
 */
export function feedSplits<T>(input: Buffer | string, run: (chunks: Buffer[]) => T): Array<{ label: string; result: T }> {
  return splitPlans(input).map(({ label, chunks }) => ({ label, result: run(chunks) }));
}

/** Chunks of `bytes` cut at `points` (modulo its length); empty chunks included: a zero-length read must be harmless. */
export function cut(bytes: Uint8Array, points: number[]): Uint8Array[] {
  const at = [...new Set(points.map((p) => p % (bytes.length + 1)))].sort((a, b) => a - b);
  const chunks: Uint8Array[] = [];
  let prev = 0;
  for (const p of at) {
    chunks.push(bytes.subarray(prev, p));
    prev = p;
  }
  chunks.push(bytes.subarray(prev));
  return chunks;
}

/**
 * Protocol-shaped fuzz input: up to `parts` pieces, each one of the protocol
 * `tokens` (latin1) or up to `partBytes` random bytes, so that random input
 * steers the parser into its interesting states.
 */
export function byteSoup(tokens: string[], sizes: { parts: number; partBytes: number }): fc.Arbitrary<Uint8Array> {
  const pieces = tokens.map((t) => Buffer.from(t, 'latin1'));
  return fc
    .array(fc.oneof(fc.constantFrom(...pieces), fc.uint8Array({ maxLength: sizes.partBytes }).map((u) => Buffer.from(u))), { maxLength: sizes.parts })
    .map((parts) => new Uint8Array(Buffer.concat(parts)));
}

/** A parser as the shared random-input properties see it. */
export interface FuzzedParser<L> {
  name: string;
  /** Raw bytes and protocol-shaped soups. */
  inputArb: fc.Arbitrary<Uint8Array>;
  /** The limits production runs the parser with (from src/config/limits.ts): the main properties use these. */
  productionLimits: L;
  /** Small random limits, for the additional properties: random input then also reaches the edge of every limit. */
  smallLimitsArb: fc.Arbitrary<L>;
  /** Feeds the chunks, checking the parser's invariants at every step (throws on a violation). */
  feed: (chunks: Uint8Array[], limits: L, withSasl: boolean) => { events: unknown[]; fatal: boolean };
  /** A line with no end longer than the production line limit: its size range, and the byte that stands in for LF. */
  flood: { minLength: number; maxLength: number; lfStandIn: number; runs: number };
  runs: { anyInput: number; chunking: number };
}

/**
 * The properties every pre-login parser must have under random input: it
 * never throws or hangs and stays within its limits (checked by `feed`), cuts
 * off a flood with no line end, and gives the same events however TCP cut
 * the bytes. Each runs with the production limits; the same properties with
 * small random limits are additional.
 */
export function describeRandomInput<L>(p: FuzzedParser<L>): void {
  const pointsArb = (max: number) => fc.array(fc.nat(), { maxLength: max });
  const limitSets: Array<[string, fc.Arbitrary<L>]> = [
    ['with the production limits', fc.constant(p.productionLimits)],
    ['with small random limits', p.smallLimitsArb],
  ];
  describe(`${p.name} parser under random input`, () => {
    it.each(limitSets)('%s: never throws, always stops, stays within its limits and drops everything after a fatal error', (_label, limitsArb) => {
      fc.assert(
        fc.property(p.inputArb, pointsArb(12), limitsArb, fc.boolean(), (bytes, points, limits, withSasl) => {
          p.feed(cut(bytes, points), limits, withSasl);
        }),
        { numRuns: p.runs.anyInput },
      );
    });

    it('with the production limits, a flood with no line end is cut off at the line limit', () => {
      const { minLength, maxLength, lfStandIn, runs } = p.flood;
      const floodArb = fc.uint8Array({ minLength, maxLength }).map((u) => u.map((b) => (b === 0x0a ? lfStandIn : b)));
      fc.assert(
        fc.property(floodArb, pointsArb(20), (bytes, points) => {
          expect(p.feed(cut(bytes, points), p.productionLimits, false).fatal).toBe(true);
        }),
        { numRuns: runs },
      );
    });

    it.each(limitSets)('%s: gives the same events however the bytes are chunked', (_label, limitsArb) => {
      fc.assert(
        fc.property(p.inputArb, pointsArb(12), limitsArb, (bytes, points, limits) => {
          const whole = p.feed([bytes], limits, true).events;
          expect(p.feed(cut(bytes, points), limits, true).events).toEqual(whole);
        }),
        { numRuns: p.runs.chunking },
      );
    });
  });
}

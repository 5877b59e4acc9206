/**
 * Chunkings of one input for parser tests: a parser must produce the same
 * events however the network happens to cut the bytes.
 *
 * Protocol neutral: shared by the IMAP and POP3 parser tests.
 */

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

/**
 * Processes for the benchmark: a cleanup registry that runs on normal exit,
 * failure, Ctrl-C and SIGTERM; spawning children that die with us; and /proc
 * readers (RSS, PSS, CPU time, process trees) for the measurements.
 *
 * Every child is spawned through `setpriv --pdeathsig` when it is available,
 * so even a SIGKILLed bench leaves nothing running.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync, readdirSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

// ---------------------------------------------------------------------------
// Cleanup

type Cleanup = { name: string; run: () => Promise<void> | void };
const cleanups: Cleanup[] = [];
let cleaning: Promise<void> | null = null;

/** Registers work to undo at the end; runs in reverse order of registration. */
export function onCleanup(name: string, run: () => Promise<void> | void): void {
  cleanups.push({ name, run });
}

export function runCleanups(): Promise<void> {
  cleaning ??= (async () => {
    while (cleanups.length > 0) {
      const c = cleanups.pop()!;
      try {
        await withTimeout(Promise.resolve(c.run()), 15_000, `cleanup ${c.name}`);
      } catch (err) {
        process.stderr.write(`bench: cleanup "${c.name}" failed: ${(err as Error).message}\n`);
      }
    }
  })();
  return cleaning;
}

let signalled = false;
/** Ctrl-C / SIGTERM / SIGHUP: clean everything up, then exit with 128+n. */
export function installSignalHandlers(): void {
  const handler = (signal: NodeJS.Signals, code: number) => {
    if (signalled) {
      process.stderr.write(`bench: ${signal} again, exiting now\n`);
      process.exit(code);
    }
    signalled = true;
    process.stderr.write(`\nbench: ${signal}: stopping every process and removing temp dirs...\n`);
    void runCleanups().finally(() => process.exit(code));
  };
  process.on('SIGINT', () => handler('SIGINT', 130));
  process.on('SIGTERM', () => handler('SIGTERM', 143));
  process.on('SIGHUP', () => handler('SIGHUP', 129));
  // Last resort, synchronous: SIGKILL whatever child is still tracked.
  process.on('exit', () => {
    for (const child of children) {
      try {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      } catch {
        // exiting anyway
      }
    }
  });
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms);
      timer.unref();
    }),
  ]);
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------
// Children

const children = new Set<ChildProcess>();

let setprivOk: boolean | undefined;
async function hasSetpriv(): Promise<boolean> {
  if (setprivOk === undefined) {
    setprivOk = await execFileP('setpriv', ['--pdeathsig', 'KILL', 'true']).then(
      () => true,
      () => false,
    );
  }
  return setprivOk;
}

export interface Child {
  proc: ChildProcess;
  pid: number;
  /** The last 64 KiB of stdout+stderr. */
  output(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once it has exited. */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Spawns a child that cannot outlive the bench (pdeathsig), collects its
 * output, and registers its stop as a cleanup. setpriv execs the command, so
 * the pid is the command's own pid.
 */
export async function spawnChild(
  name: string,
  cmd: string,
  args: string[],
  opts: {
    env?: NodeJS.ProcessEnv;
    cwd?: string;
    deathSignal?: 'TERM' | 'KILL';
    onLine?: (line: string) => void;
    /** Send stdout and stderr to this file instead of a pipe (nothing to read in the bench's event loop). */
    logFile?: string;
  } = {},
): Promise<Child> {
  const useSetpriv = await hasSetpriv();
  const [file, argv] = useSetpriv ? ['setpriv', ['--pdeathsig', opts.deathSignal ?? 'KILL', '--', cmd, ...args]] : [cmd, args];
  const logFd = opts.logFile ? openSync(opts.logFile, 'a', 0o600) : null;
  const proc = spawn(file, argv, {
    stdio: logFd === null ? ['ignore', 'pipe', 'pipe'] : ['ignore', logFd, logFd],
    env: opts.env ?? process.env,
    cwd: opts.cwd,
  });
  if (logFd !== null) closeSync(logFd);
  children.add(proc);
  let out = '';
  let partial = '';
  const collect = (d: Buffer) => {
    const text = d.toString('utf8');
    out = (out + text).slice(-65_536);
    if (opts.onLine) {
      partial += text;
      const lines = partial.split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) opts.onLine(line);
    }
  };
  proc.stdout?.on('data', collect);
  proc.stderr?.on('data', collect);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    proc.once('exit', (code, signal) => {
      children.delete(proc);
      resolve({ code, signal });
    });
  });
  await new Promise<void>((resolve, reject) => {
    proc.once('spawn', () => resolve());
    proc.once('error', (err) => reject(new Error(`${name}: cannot run ${cmd}: ${err.message}`)));
  });
  let stopping: Promise<void> | null = null;
  const child: Child = {
    proc,
    pid: proc.pid!,
    output: () => {
      if (!opts.logFile) return out;
      try {
        return readFileSync(opts.logFile, 'utf8').slice(-65_536);
      } catch {
        return '';
      }
    },
    exited,
    stop(graceMs = 5_000) {
      stopping ??= (async () => {
        if (proc.exitCode !== null || proc.signalCode !== null) return;
        proc.kill('SIGTERM');
        const timer = setTimeout(() => proc.kill('SIGKILL'), graceMs);
        await exited;
        clearTimeout(timer);
      })();
      return stopping;
    },
  };
  onCleanup(name, () => child.stop());
  return child;
}

// ---------------------------------------------------------------------------
// /proc

/** VmRSS of a process in bytes (0 when it is gone). */
export function rssBytes(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** Proportional set size in bytes (shared pages split between their users); 0 when unreadable. */
export function pssBytes(pid: number): number {
  try {
    const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

const CLK_TCK = 100;
/**
 * User + system CPU seconds of a process; with `reaped`, plus those of its
 * children that have exited and been waited for.
 */
export function cpuSeconds(pid: number, reaped = false): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields[0] is field 3 (state); utime is field 14, stime 15, cutime 16, cstime 17.
    const own = Number(fields[11]) + Number(fields[12]);
    return (reaped ? own + Number(fields[13]) + Number(fields[14]) : own) / CLK_TCK;
  } catch {
    return 0;
  }
}

/**
 * CPU seconds of a process's main thread (tid = pid: Node's event loop) and of
 * all its other threads (libuv pool: argon2, V8 helpers), plus how often the
 * main thread was preempted (involuntary context switches).
 */
export function threadCpu(pid: number): { main: number; others: number; mainPreempted: number } {
  let main = 0;
  let others = 0;
  let mainPreempted = 0;
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
        const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        const cpu = (Number(f[11]) + Number(f[12])) / CLK_TCK;
        if (Number(tid) === pid) {
          main = cpu;
          const m = /^nonvoluntary_ctxt_switches:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8'));
          mainPreempted = m ? Number(m[1]) : 0;
        } else {
          others += cpu;
        }
      } catch {
        // thread gone
      }
    }
  } catch {
    // process gone
  }
  return { main, others, mainPreempted };
}

/** Busy and steal CPU seconds of the whole machine, from /proc/stat. */
function machineCpu(): { busy: number; steal: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!;
  const [, user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).map(Number);
  return { busy: (user! + nice! + system! + irq! + softirq!) / CLK_TCK, steal: (steal ?? 0) / CLK_TCK };
}

/** Cores used by everything but this process over the next `ms` (call before starting any child). */
export async function otherLoad(ms: number): Promise<number> {
  const m0 = machineCpu();
  const s0 = process.cpuUsage();
  const t0 = performance.now();
  await sleep(ms);
  const m1 = machineCpu();
  const s1 = process.cpuUsage(s0);
  const dt = (performance.now() - t0) / 1000;
  return Math.max(0, (m1.busy - m0.busy - (s1.user + s1.system) / 1e6) / dt);
}

/**
 * Waits up to `maxSeconds` until the machine has been quiet (other processes
 * using under `threshold` cores) for 5 seconds in a row.
 */
export async function waitForQuiet(maxSeconds: number, threshold: number, onWait: (load: number) => void): Promise<{ waitedSeconds: number; quiet: boolean; lastLoad: number }> {
  const t0 = performance.now();
  let quietFor = 0;
  let last = 0;
  let reported = 0;
  while ((performance.now() - t0) / 1000 < maxSeconds) {
    last = await otherLoad(1000);
    quietFor = last < threshold ? quietFor + 1 : 0;
    if (quietFor >= 5) return { waitedSeconds: Math.round((performance.now() - t0) / 1000), quiet: true, lastLoad: last };
    if (last >= threshold && performance.now() - reported > 10_000) {
      reported = performance.now();
      onWait(last);
    }
  }
  return { waitedSeconds: Math.round((performance.now() - t0) / 1000), quiet: false, lastLoad: last };
}

export interface PhaseLoad {
  seconds: number;
  /** Cores used by processes that are not part of the benchmark (mean over the phase). */
  otherCoresMean: number;
  otherCoresMax: number;
  stealCoresMean: number;
}

/**
 * Samples, twice a second, how much CPU the machine spends outside the
 * benchmark's own processes (another test suite, a build...): numbers taken
 * while something else eats a core are not comparable with a quiet run.
 */
export class LoadMonitor {
  private timer: NodeJS.Timeout | null = null;
  private phase = 'setup';
  private readonly phases = new Map<string, { seconds: number; other: number; steal: number; max: number }>();
  private last: { t: number; busy: number; steal: number; ours: number } | null = null;

  constructor(private readonly ourCpu: () => number) {}

  start(): void {
    this.sample();
    this.timer = setInterval(() => this.sample(), 500);
    this.timer.unref();
  }

  setPhase(name: string): void {
    this.sample();
    this.phase = name;
  }

  stop(): Record<string, PhaseLoad> {
    this.sample();
    if (this.timer) clearInterval(this.timer);
    const out: Record<string, PhaseLoad> = {};
    for (const [name, p] of this.phases) {
      out[name] = {
        seconds: Math.round(p.seconds * 10) / 10,
        otherCoresMean: Math.round((p.other / Math.max(p.seconds, 1e-9)) * 100) / 100,
        otherCoresMax: Math.round(p.max * 100) / 100,
        stealCoresMean: Math.round((p.steal / Math.max(p.seconds, 1e-9)) * 100) / 100,
      };
    }
    return out;
  }

  private sample(): void {
    const now = performance.now() / 1000;
    const m = machineCpu();
    const self = process.cpuUsage();
    const ours = this.ourCpu() + (self.user + self.system) / 1e6;
    const last = this.last;
    this.last = { t: now, busy: m.busy, steal: m.steal, ours };
    if (!last) return;
    const dt = now - last.t;
    if (dt <= 0.05) return;
    const other = Math.max(0, m.busy - last.busy - (ours - last.ours));
    const acc = this.phases.get(this.phase) ?? { seconds: 0, other: 0, steal: 0, max: 0 };
    acc.seconds += dt;
    acc.other += other;
    acc.steal += m.steal - last.steal;
    acc.max = Math.max(acc.max, other / dt);
    this.phases.set(this.phase, acc);
  }
}

export function commOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

export function cmdlineOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').trim();
  } catch {
    return '';
  }
}

/** Direct children of `pid`, from /proc/<pid>/task/<tid>/children. */
export function childPids(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        out.push(...readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').split(/\s+/).filter(Boolean).map(Number));
      } catch {
        // thread gone
      }
    }
  } catch {
    // process gone
  }
  return out;
}

/** `pid` and all its descendants. */
export function processTree(pid: number): number[] {
  const all: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    const p = queue.shift()!;
    all.push(p);
    queue.push(...childPids(p));
  }
  return all;
}

export interface MemorySample {
  rss: number;
  pss: number;
  processes: number;
}

export function sumMemory(pids: number[]): MemorySample {
  let rss = 0;
  let pss = 0;
  for (const p of pids) {
    rss += rssBytes(p);
    pss += pssBytes(p);
  }
  return { rss, pss, processes: pids.length };
}

/** The open-file limits of this process. */
export function nofileLimit(): { soft: number; hard: number } {
  const m = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
  const n = (s: string | undefined) => (s === 'unlimited' || s === undefined ? Number.MAX_SAFE_INTEGER : Number(s));
  return { soft: n(m?.[1]), hard: n(m?.[2]) };
}

/**
 * Raises this process's open-file limit (children inherit it) with
 * `prlimit --pid`: to `want` when allowed (root may raise the hard limit too),
 * else to the hard limit. Returns the limit in force afterwards.
 */
export async function raiseNofile(want: number): Promise<{ soft: number; hard: number }> {
  const before = nofileLimit();
  if (before.soft >= want) return before;
  const root = process.getuid?.() === 0;
  const target = root ? want : Math.min(want, before.hard);
  const hard = Math.max(target, before.hard);
  try {
    await execFileP('prlimit', ['--pid', String(process.pid), `--nofile=${target}:${hard}`]);
  } catch {
    // prlimit missing or not permitted: the caller reports what is in force
  }
  return nofileLimit();
}

export async function commandVersion(cmd: string, args: string[]): Promise<string | null> {
  try {
    const { stdout, stderr } = await execFileP(cmd, args, { timeout: 5_000 });
    return `${stdout}${stderr}`.trim().split('\n')[0] ?? null;
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    const text = `${e.stdout ?? ''}${e.stderr ?? ''}`.trim();
    return text ? text.split('\n')[0]! : null;
  }
}

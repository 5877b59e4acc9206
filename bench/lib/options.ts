/** Command-line options of `npm run bench -- ...` (see docs/benchmarks.md). */
import { readFileSync } from 'node:fs';
import path from 'node:path';

export interface BenchOptions {
  /** Idle sessions per target (--idle N or BENCH_IDLE). */
  idle: number;
  /** Accounts for the login tests (each has one app password). */
  accounts: number;
  /** Warm-login rounds over all accounts. */
  warmRounds: number;
  /** Concurrent clients in the throughput test. */
  tputClients: number;
  /** Seconds of throughput per target (split into two interleaved halves). */
  tputSeconds: number;
  /** Measured FETCH runs per target. */
  fetchRuns: number;
  /** Size of the seeded message, MiB. */
  fetchMiB: number;
  /** Wrong-password storm: concurrent clients and seconds per gateway. */
  stormClients: number;
  stormSeconds: number;
  nginxWorkers: number;
  noNginx: boolean;
  /** Skip the second mailgate on the PostgreSQL store. */
  noPostgres: boolean;
  /** PostgreSQL server settings over the bench's (experiments, e.g. synchronous_commit=on). */
  postgresSettings: Record<string, string>;
  /** Wait up to this many seconds for other processes to leave the CPUs alone. */
  waitQuiet: number;
  /** TOML appended to mailgate's generated config (experiments, e.g. [auth] hash_concurrency = 1). */
  mailgateExtraToml: string | null;
  /** Extra node options for the mailgate process (experiments, e.g. --max-semi-space-size=1). */
  mailgateNodeOptions: string[];
  /** Where the JSON goes. */
  out: string;
}

const HELP = `usage: npm run bench -- [options]

  --idle N            idle sessions per target (default 1000; env BENCH_IDLE)
  --accounts N        accounts for the login tests (default 50)
  --warm-rounds N     warm-login rounds over all accounts (default 6)
  --clients N         concurrent clients for login throughput (default 16)
  --tput-seconds S    login-throughput seconds per target (default 5)
  --fetch-runs N      measured 20 MiB FETCH runs per target (default 5)
  --fetch-mib N       size of the FETCHed message in MiB (default 20)
  --storm-clients N   wrong-password storm clients (default 16)
  --storm-seconds S   storm length per gateway (default 5)
  --nginx-workers N   nginx worker_processes (default 1)
  --no-nginx          skip the nginx column
  --no-postgres       skip the "mailgate (PostgreSQL)" column (a second mailgate
                      on a PostgreSQL store; skipped anyway without PostgreSQL)
  --postgres-set K=V  a PostgreSQL server setting over the bench's, repeatable
                      (experiments, e.g. synchronous_commit=on; recorded)
  --wait-quiet S      before starting, wait up to S seconds for the machine to be
                      quiet (other processes < 0.3 core for 5 s; default 60, 0 = don't)
  --mailgate-toml F   append the TOML file F to mailgate's generated config
                      (experiments; the results record it)
  --mailgate-node O   extra node option(s) for the mailgate process, space-separated
                      (experiments, e.g. "--max-semi-space-size=1"; recorded too)
  --out FILE          JSON results file (default bench/results/latest.json)
  -h, --help          this text
`;

export function parseOptions(argv: string[], env: NodeJS.ProcessEnv, root: string): BenchOptions {
  const o: BenchOptions = {
    idle: env.BENCH_IDLE ? Number(env.BENCH_IDLE) : 1000,
    accounts: 50,
    warmRounds: 6,
    tputClients: 16,
    tputSeconds: 5,
    fetchRuns: 5,
    fetchMiB: 20,
    stormClients: 16,
    stormSeconds: 5,
    nginxWorkers: 1,
    noNginx: false,
    noPostgres: false,
    postgresSettings: {},
    waitQuiet: 60,
    mailgateExtraToml: null,
    mailgateNodeOptions: [],
    out: path.join(root, 'bench', 'results', 'latest.json'),
  };
  const num = (flag: string, v: string | undefined, min: number, max: number): number => {
    const n = Number(v);
    if (v === undefined || !Number.isFinite(n) || n < min || n > max) throw new Error(`${flag}: expected a number from ${min} to ${max}, got ${v ?? 'nothing'}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const [flag, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const value = () => inline ?? argv[++i];
    switch (flag) {
      case '--idle':
        o.idle = num(flag, value(), 0, 200_000);
        break;
      case '--accounts':
        o.accounts = num(flag, value(), 2, 1000);
        break;
      case '--warm-rounds':
        o.warmRounds = num(flag, value(), 1, 1000);
        break;
      case '--clients':
        o.tputClients = num(flag, value(), 1, 64);
        break;
      case '--tput-seconds':
        o.tputSeconds = num(flag, value(), 0.5, 600);
        break;
      case '--fetch-runs':
        o.fetchRuns = num(flag, value(), 1, 100);
        break;
      case '--fetch-mib':
        o.fetchMiB = num(flag, value(), 1, 200);
        break;
      case '--storm-clients':
        o.stormClients = num(flag, value(), 1, 64);
        break;
      case '--storm-seconds':
        o.stormSeconds = num(flag, value(), 0.5, 600);
        break;
      case '--nginx-workers':
        o.nginxWorkers = num(flag, value(), 1, 64);
        break;
      case '--no-nginx':
        o.noNginx = true;
        break;
      case '--no-postgres':
        o.noPostgres = true;
        break;
      case '--postgres-set': {
        const setting = value() ?? '';
        const eq = setting.indexOf('=');
        if (eq < 1 || !/^[a-z_.]+$/.test(setting.slice(0, eq))) throw new Error(`--postgres-set: expected name=value, got ${setting || 'nothing'}`);
        o.postgresSettings[setting.slice(0, eq)] = setting.slice(eq + 1);
        break;
      }
      case '--wait-quiet':
        o.waitQuiet = num(flag, value(), 0, 3600);
        break;
      case '--mailgate-toml':
        o.mailgateExtraToml = readFileSync(path.resolve(value() ?? ''), 'utf8');
        break;
      case '--mailgate-node':
        o.mailgateNodeOptions = (value() ?? '').split(' ').filter(Boolean);
        break;
      case '--out':
        o.out = path.resolve(value() ?? '');
        break;
      case '-h':
      case '--help':
        process.stdout.write(HELP);
        process.exit(0);
        break;
      default:
        throw new Error(`unknown option ${a}\n${HELP}`);
    }
  }
  if (!Number.isInteger(o.idle) || o.idle < 0) throw new Error(`--idle / BENCH_IDLE: expected a whole number, got ${o.idle}`);
  return o;
}

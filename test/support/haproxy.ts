/**
 * A real HAProxy (Debian's `haproxy` package, scripts/install-test-deps.sh)
 * in front of several gateway nodes, as docs/scaling.md deploys it: TCP
 * mode, TLS passed through untouched, the client's address handed on in a
 * PROXY protocol v2 header (`send-proxy-v2`), each node's `/healthz` as its
 * health check, long timeouts for IMAP IDLE.
 *
 * `haproxyConfig` writes the configuration; the example shipped in
 * `config/haproxy/mailgate.cfg` (and shown in docs/scaling.md) is
 * `haproxyConfig(EXAMPLE_LAYOUT)`, and test/config/haproxy.test.ts keeps the
 * three the same. The tests add only what a test needs: loopback ports, a
 * stats socket in the temporary folder, the log on stdout, and one more
 * frontend per node and service that reaches that node only, so a test can
 * say which node a client lands on.
 *
 * `startHaproxy` runs it in the foreground (`haproxy -f CFG -db`) as a child
 * of the test, as whoever runs the tests (no `user`/`group`: binding
 * loopback ports above 1024 needs no privilege), with every file in a
 * temporary folder; `stop()` kills it and removes the folder.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { freePorts } from './ports.js';
import { waitUntil } from './timing.js';
import { makeTempDir, removeTempDir } from './tmp.js';

const execFileP = promisify(execFile);

export const HAPROXY = '/usr/sbin/haproxy';

/** One gateway node behind the balancer. */
export interface BalancedNode {
  /** The server's name in HAProxy (its logs and stats). */
  name: string;
  host: string;
  /** Where the node listens for each service (a `[[listen]]` with `proxy_protocol = true`). */
  ports: Record<string, number>;
  /** The node's `metrics.listen` port: HAProxy asks its `/healthz`. */
  healthPort: number;
}

export interface HaproxyLayout {
  /** Lines of the `global` section (the example: the service user, syslog, maxconn). */
  global: string[];
  /** Each service the balancer forwards to every node, and the address it binds (`host:port`). */
  frontends: Record<string, string>;
  nodes: BalancedNode[];
  /** Health checks: every `interMs`, a node is out after `fall` failed checks and back after `rise` good ones. */
  health: { interMs: number; fall: number; rise: number };
  /** Tests only: for each node, each service again on an address that reaches that node alone. */
  perNode?: Record<string, Record<string, string>>;
}

/**
 * The HAProxy configuration of `layout`. Everything but `global`, the
 * addresses and the per-node frontends is the same for the tests and for
 * the shipped example.
 */
export function haproxyConfig(layout: HaproxyLayout): string {
  const { interMs, fall, rise } = layout.health;
  const lines = [
    'global',
    ...layout.global.map((l) => `    ${l}`),
    '',
    'defaults',
    '    mode tcp',
    '    log global',
    '    option tcplog',
    '    # Keep-alives on both sides, so that no firewall drops a quiet IMAP IDLE.',
    '    option tcpka',
    '    # Sessions last hours (IDLE): a new one goes to the node with the fewest, so a',
    '    # node that was restarted fills up again instead of staying empty.',
    '    balance leastconn',
    '    # A node that refuses the connection (killed, restarting): try another at once.',
    '    option redispatch 1',
    '    retries 2',
    '    timeout connect 2s',
    '    # Longer than mailgate\'s timeouts.session_idle_seconds (35 minutes): the',
    '    # gateway decides when an idle session ends, not the balancer.',
    '    timeout client 1h',
    '    timeout server 1h',
    '    timeout tunnel 1h',
    '    timeout check 2s',
    '    # The health check asks the node\'s metrics listener for /healthz: 200 while',
    '    # it serves, 503 once it is stopping, so a node shutting down gets no new',
    '    # clients. Not /readyz: with the database or the mail server down, every node',
    '    # is unready, and clients should get mailgate\'s temporary answer rather than',
    '    # a closed connection.',
    '    option httpchk GET /healthz',
    '    http-check expect status 200',
    '    # The client\'s address goes to the node in a PROXY v2 header (its listeners',
    '    # have proxy_protocol = true, this balancer is in its [proxy] trusted); the',
    '    # health checks go to another port, without one.',
    `    default-server send-proxy-v2 check inter ${duration(interMs)} fall ${fall} rise ${rise}`,
  ];
  const server = (node: BalancedNode, service: string) => {
    const port = node.ports[service];
    if (port === undefined) throw new Error(`haproxyConfig: node ${node.name} has no port for ${service}`);
    return `    server ${node.name} ${node.host}:${port} check port ${node.healthPort}`;
  };
  for (const [service, bind] of Object.entries(layout.frontends)) {
    lines.push('', `frontend ${service}`, `    bind ${bind}`, `    default_backend ${service}`);
    lines.push('', `backend ${service}`, ...layout.nodes.map((node) => server(node, service)));
  }
  for (const [name, frontends] of Object.entries(layout.perNode ?? {})) {
    const node = layout.nodes.find((n) => n.name === name);
    if (!node) throw new Error(`haproxyConfig: no node ${name}`);
    for (const [service, bind] of Object.entries(frontends)) {
      lines.push('', `frontend ${service}_${name}`, `    bind ${bind}`, `    default_backend ${service}_${name}`);
      lines.push('', `backend ${service}_${name}`, server(node, service));
    }
  }
  return `${lines.join('\n')}\n`;
}

/** HAProxy's spelling of a time: `2s`, `500ms`. */
function duration(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`;
}

/** The example in config/haproxy/mailgate.cfg: three nodes on a private network, the four mail ports. */
export const EXAMPLE_LAYOUT: HaproxyLayout = {
  global: [
    'log /dev/log local0',
    'user haproxy',
    'group haproxy',
    '# At least every node\'s sessions together: each client is one connection here.',
    'maxconn 100000',
  ],
  frontends: { imaps: ':::993 v4v6', imap: ':::143 v4v6', pop3s: ':::995 v4v6', pop3: ':::110 v4v6' },
  nodes: ['10.0.0.11', '10.0.0.12', '10.0.0.13'].map((host, i) => ({
    name: `mailgate${i + 1}`,
    host,
    ports: { imaps: 993, imap: 143, pop3s: 995, pop3: 110 },
    healthPort: 9925,
  })),
  health: { interMs: 2000, fall: 2, rise: 2 },
};

/** What the first lines of the shipped example say before the generated configuration. */
export const EXAMPLE_HEADER = `# HAProxy in front of several mailgate nodes that share one PostgreSQL store
# (docs/scaling.md). TCP mode: TLS goes through to the nodes untouched, and
# the client's address reaches them in a PROXY protocol v2 header. On each
# node: every [[listen]] with proxy_protocol = true, [proxy] trusted = [this
# balancer's address], metrics.listen on port 9925 (the health check asks
# its /healthz). The tests run this same configuration (test/support/haproxy.ts,
# haproxyConfig), with loopback addresses and faster health checks.
`;

/** The shipped example, as config/haproxy/mailgate.cfg holds it. */
export function exampleConfig(): string {
  return `${EXAMPLE_HEADER}\n${haproxyConfig(EXAMPLE_LAYOUT)}`;
}

export interface HaproxyOptions {
  nodes: BalancedNode[];
  /** The services to balance (keys of each node's `ports`), e.g. ['imaps', 'pop3s']. */
  services: string[];
}

export interface HaproxyHandle {
  dir: string;
  configFile: string;
  /** The frontend port of `service`: balanced over every node, or reaching `node` only. */
  port(service: string, node?: string): number;
  /** The servers' states (`UP`, `DOWN`, ...) by `backend/server`, from the stats socket. */
  serverStates(): Promise<Map<string, string>>;
  /** What HAProxy wrote (its connection log, warnings), for failure messages. */
  output(): string;
  stop(): Promise<void>;
}

/** The tests' health checks: a killed node is out within about half a second. */
const TEST_HEALTH = { interMs: 500, fall: 1, rise: 1 };

/** Starts HAProxy in front of `nodes` and resolves once every server is UP. */
export async function startHaproxy(options: HaproxyOptions): Promise<HaproxyHandle> {
  const dir = await makeTempDir('haproxy');
  try {
    for (let attempt = 1; ; attempt++) {
      try {
        return await launch(dir, options);
      } catch (err) {
        // A port freePorts gave us was taken before HAProxy bound it: try new ones.
        if (attempt >= 3 || !(err instanceof BindError)) throw err;
      }
    }
  } catch (err) {
    await removeTempDir(dir);
    throw err;
  }
}

class BindError extends Error {}

async function launch(dir: string, options: HaproxyOptions): Promise<HaproxyHandle> {
  const names = options.nodes.map((n) => n.name);
  const ports = await freePorts(options.services.length * (1 + names.length));
  const frontends: Record<string, string> = {};
  const perNode: Record<string, Record<string, string>> = Object.fromEntries(names.map((n) => [n, {}]));
  const portOf = new Map<string, number>();
  for (const service of options.services) {
    const port = ports.pop()!;
    frontends[service] = `127.0.0.1:${port}`;
    portOf.set(service, port);
    for (const name of names) {
      const own = ports.pop()!;
      perNode[name]![service] = `127.0.0.1:${own}`;
      portOf.set(`${service}/${name}`, own);
    }
  }
  const socket = path.join(dir, 'stats.sock');
  const configFile = path.join(dir, 'haproxy.cfg');
  const layout: HaproxyLayout = {
    global: [`stats socket ${socket} mode 600 level operator`, 'log stdout format raw local0 info'],
    frontends,
    nodes: options.nodes,
    health: TEST_HEALTH,
    perNode,
  };
  writeFileSync(configFile, haproxyConfig(layout));

  const child = await spawnHaproxy(configFile);
  let output = '';
  child.stdout!.on('data', (d: Buffer) => (output = (output + d.toString()).slice(-50_000)));
  child.stderr!.on('data', (d: Buffer) => (output = (output + d.toString()).slice(-50_000)));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const running = () => child.exitCode === null && child.signalCode === null;

  const handle: HaproxyHandle = {
    dir,
    configFile,
    port(service, node) {
      const port = portOf.get(node === undefined ? service : `${service}/${node}`);
      if (port === undefined) throw new Error(`no HAProxy frontend for ${service}${node ? ` on ${node}` : ''}`);
      return port;
    },
    serverStates: () => serverStates(socket),
    output: () => output,
    async stop() {
      if (running()) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
        await exited;
        clearTimeout(timer);
      }
      await removeTempDir(dir);
    },
  };
  try {
    await waitUntil(
      async () => {
        if (!running()) {
          throw /cannot bind|Address already in use/i.test(output) ? new BindError(output) : new Error(`haproxy exited: ${output}`);
        }
        const states = await serverStates(socket).catch(() => null);
        return states !== null && states.size > 0 && [...states.values()].every((s) => s === 'UP');
      },
      `HAProxy to start and see every node UP (output: ${output})`,
      10_000,
    );
  } catch (err) {
    if (running()) child.kill('SIGKILL');
    await exited;
    throw err;
  }
  return handle;
}

let setprivPromise: Promise<boolean> | undefined;
/** Is `setpriv --pdeathsig` (util-linux) usable? Then a test worker that dies takes HAProxy with it. */
function hasSetpriv(): Promise<boolean> {
  setprivPromise ??= execFileP('setpriv', ['--pdeathsig', 'KILL', 'true']).then(
    () => true,
    () => false,
  );
  return setprivPromise;
}

async function spawnHaproxy(configFile: string): Promise<ChildProcess> {
  const args = ['-f', configFile, '-db'];
  const [cmd, argv] = (await hasSetpriv()) ? ['setpriv', ['--pdeathsig', 'KILL', '--', HAPROXY, ...args]] : [HAPROXY, args];
  return spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C' } });
}

/** `show stat` on the stats socket: the status column of every server, by `backend/server`. */
function serverStates(socket: string): Promise<Map<string, string>> {
  return new Promise((resolve, reject) => {
    const conn = net.connect(socket);
    let text = '';
    conn.setTimeout(2_000, () => conn.destroy(new Error('no answer from the HAProxy stats socket')));
    conn.on('connect', () => conn.write('show stat\n'));
    conn.on('data', (d: Buffer) => (text += d.toString()));
    conn.on('error', reject);
    conn.on('close', () => {
      const lines = text.split('\n').filter((l) => l.length > 0);
      const header = lines.shift()?.replace(/^# /, '').split(',') ?? [];
      const [px, sv, status] = ['pxname', 'svname', 'status'].map((c) => header.indexOf(c));
      const states = new Map<string, string>();
      for (const line of lines) {
        const cells = line.split(',');
        const server = cells[sv!];
        if (server && server !== 'FRONTEND' && server !== 'BACKEND') states.set(`${cells[px!]}/${server}`, cells[status!] ?? '');
      }
      resolve(states);
    });
  });
}

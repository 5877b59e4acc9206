/**
 * Talking to an upstream without logging in. At start-up: learning its
 * capabilities, so the gateway's first greeting can already list them
 * (Thunderbird reads capabilities from the greeting and asks no more on
 * implicit TLS); best effort, a failure only means the greeting lists
 * mailgate's own capabilities until the first login. For `mailgate check`
 * and the readiness check: whether it can be reached with its TLS settings.
 */
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import { FIXED_LIMITS } from '../config/limits.js';
import { connectUpstream, upgradeUpstream, UpstreamError, type UpstreamTarget } from './connect.js';
import { ResponseReader } from './response-reader.js';

export async function probeImapCapabilities(target: UpstreamTarget, timeoutMs: number): Promise<string[] | null> {
  const socket = await connectUpstream({ ...target, tls: target.tls === 'implicit' ? 'implicit' : 'none' }, timeoutMs);
  const reader = new ResponseReader(socket, timeoutMs);
  try {
    const greeting = await reader.readLine();
    const inline = /^\* OK \[CAPABILITY ([^\]]*)\]/i.exec(greeting);
    if (inline) return inline[1]!.split(' ').filter(Boolean);
    socket.write('mg1 CAPABILITY\r\n');
    for (;;) {
      const line = await reader.readLine();
      const caps = /^\* CAPABILITY (.*)$/i.exec(line);
      if (caps) return caps[1]!.split(' ').filter(Boolean);
      if (line.startsWith('mg1 ')) return null;
    }
  } finally {
    reader.detach();
    socket.end('mg2 LOGOUT\r\n');
    setTimeout(() => socket.destroy(), FIXED_LIMITS.upstream_logout_grace_ms).unref();
  }
}

export async function probePop3Capabilities(target: UpstreamTarget, timeoutMs: number): Promise<string[] | null> {
  const socket = await connectUpstream({ ...target, tls: target.tls === 'implicit' ? 'implicit' : 'none' }, timeoutMs);
  const reader = new ResponseReader(socket, timeoutMs);
  try {
    if (!(await reader.readLine()).startsWith('+OK')) return null;
    socket.write('CAPA\r\n');
    if (!(await reader.readLine()).startsWith('+OK')) return null;
    const lines: string[] = [];
    for (let line = await reader.readLine(); line !== '.'; line = await reader.readLine()) lines.push(line);
    return lines;
  } finally {
    reader.detach();
    socket.end('QUIT\r\n');
    setTimeout(() => socket.destroy(), FIXED_LIMITS.upstream_logout_grace_ms).unref();
  }
}

/** What a reachability check of an upstream found (`mailgate check`, the readiness check). */
export interface UpstreamReport {
  tls: UpstreamTarget['tls'];
  /** The certificate the upstream presented over TLS, and whether it was verified (upstream.*.verify). */
  certificate: { subject: string; validTo: string; verified: boolean } | null;
  /** Capabilities as offered to an unauthenticated client, after TLS (IMAP CAPABILITY, POP3 CAPA). */
  capabilities: string[];
}

/**
 * Connects as a login would (TCP, implicit TLS or STARTTLS/STLS, the
 * certificate verified as configured), reads the capabilities, and leaves
 * (LOGOUT/QUIT) without logging in. Throws UpstreamError saying what failed.
 */
export async function checkUpstream(protocol: 'imap' | 'pop3', target: UpstreamTarget, timeoutMs: number, signal?: AbortSignal): Promise<UpstreamReport> {
  const first = await connectUpstream(target, timeoutMs);
  let socket: Socket = first;
  const reader = new ResponseReader(socket, timeoutMs);
  // The readiness check is stopped with the gateway: its sockets must not hold the process.
  const abort = () => socket.destroy(new UpstreamError('the check was stopped'));
  signal?.addEventListener('abort', abort, { once: true });
  const exchange: Exchange = {
    readLine: () => reader.readLine(),
    write: (line) => void socket.write(`${line}\r\n`),
    pendingBytes: () => reader.pendingBytes,
    upgrade: async () => {
      socket = await upgradeUpstream(socket, target, timeoutMs);
      reader.switchTo(socket);
    },
  };
  try {
    const capabilities = protocol === 'imap' ? await imapCapabilitiesAfterTls(exchange, target.tls === 'starttls') : await pop3CapabilitiesAfterTls(exchange, target.tls === 'starttls');
    return { tls: target.tls, certificate: socket instanceof TLSSocket ? peerCertificate(socket) : null, capabilities };
  } finally {
    signal?.removeEventListener('abort', abort);
    reader.detach();
    socket.end(protocol === 'imap' ? 'mgz LOGOUT\r\n' : 'QUIT\r\n');
    const last = socket;
    setTimeout(() => {
      last.destroy();
      first.destroy();
    }, FIXED_LIMITS.upstream_logout_grace_ms).unref();
  }
}

interface Exchange {
  readLine(): Promise<string>;
  write(line: string): void;
  pendingBytes(): number;
  upgrade(): Promise<void>;
}

async function imapCapabilitiesAfterTls(io: Exchange, starttls: boolean): Promise<string[]> {
  const greeting = await io.readLine();
  if (!/^\* OK\b/i.test(greeting)) throw new UpstreamError(`unexpected upstream greeting: ${greeting.slice(0, 200)}`);
  const inline = /^\* OK \[CAPABILITY ([^\]]*)\]/i.exec(greeting);
  let capabilities = inline ? inline[1]!.split(' ').filter(Boolean) : await imapCommandCapabilities(io, 'mg1');
  if (!starttls) return capabilities;
  if (!capabilities.some((c) => c.toUpperCase() === 'STARTTLS')) throw new UpstreamError('the upstream does not offer STARTTLS, but tls = "starttls" is configured');
  io.write('mg2 STARTTLS');
  const answer = await imapTagged(io, 'mg2');
  if (!/^mg2 OK\b/i.test(answer)) throw new UpstreamError(`the upstream refused STARTTLS: ${answer.slice(0, 200)}`);
  if (io.pendingBytes() > 0) throw new UpstreamError('the upstream sent data after its STARTTLS OK (possible injection)');
  await io.upgrade();
  // Capabilities before TLS cannot be trusted; ask again (RFC 3501 6.2.1).
  capabilities = await imapCommandCapabilities(io, 'mg3');
  return capabilities;
}

async function imapCommandCapabilities(io: Exchange, tag: string): Promise<string[]> {
  io.write(`${tag} CAPABILITY`);
  let capabilities: string[] | null = null;
  for (;;) {
    const line = await io.readLine();
    const caps = /^\* CAPABILITY (.*)$/i.exec(line);
    if (caps) capabilities = caps[1]!.split(' ').filter(Boolean);
    if (line.startsWith(`${tag} `)) {
      if (!capabilities || !/^\S+ OK\b/i.test(line)) throw new UpstreamError(`the upstream did not list its capabilities: ${line.slice(0, 200)}`);
      return capabilities;
    }
  }
}

async function imapTagged(io: Exchange, tag: string): Promise<string> {
  for (;;) {
    const line = await io.readLine();
    if (line.startsWith(`${tag} `)) return line;
  }
}

async function pop3CapabilitiesAfterTls(io: Exchange, starttls: boolean): Promise<string[]> {
  const greeting = await io.readLine();
  if (!greeting.startsWith('+OK')) throw new UpstreamError(`the upstream refused the connection: ${greeting.slice(0, 200)}`);
  let capabilities = await pop3Capa(io);
  if (!starttls) return capabilities;
  if (!capabilities.some((line) => line.split(' ')[0]!.toUpperCase() === 'STLS')) throw new UpstreamError('the upstream does not offer STLS, but tls = "starttls" is configured');
  io.write('STLS');
  const answer = await io.readLine();
  if (!answer.startsWith('+OK')) throw new UpstreamError(`the upstream refused STLS: ${answer.slice(0, 200)}`);
  if (io.pendingBytes() > 0) throw new UpstreamError('the upstream sent data after its STLS answer (possible injection)');
  await io.upgrade();
  capabilities = await pop3Capa(io);
  return capabilities;
}

async function pop3Capa(io: Exchange): Promise<string[]> {
  io.write('CAPA');
  // CAPA is optional (RFC 2449): a server without it has no extensions.
  if (!(await io.readLine()).startsWith('+OK')) return [];
  const lines: string[] = [];
  for (let line = await io.readLine(); line !== '.'; line = await io.readLine()) lines.push(line.startsWith('..') ? line.slice(1) : line);
  return lines;
}

function peerCertificate(socket: TLSSocket): UpstreamReport['certificate'] {
  const cert = socket.getPeerCertificate();
  const subject = cert.subjectaltname || (typeof cert.subject?.CN === 'string' ? `CN=${cert.subject.CN}` : '');
  return { subject, validTo: cert.valid_to ? new Date(cert.valid_to).toISOString() : '', verified: socket.authorized };
}

/**
 * Learns an upstream's capabilities without logging in, so the gateway's
 * first greeting can already list them (Thunderbird reads capabilities from
 * the greeting and asks no more on implicit TLS). Best effort: a failure only
 * means the greeting lists mailgate's own capabilities until the first login.
 */
import { FIXED_LIMITS } from '../config/limits.js';
import { connectUpstream, type UpstreamTarget } from './connect.js';
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

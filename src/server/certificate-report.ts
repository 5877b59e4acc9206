/**
 * What `mailgate check` says about the gateway's own certificate ([tls]):
 * the key belongs to it, the chain in the file is complete up to a root the
 * system trusts (or one the file holds), it is valid now and not about to
 * expire, it is not self-signed, and it covers the names users type. Each
 * finding is one line of the checklist, with what to do when it fails.
 */
import { createPrivateKey, X509Certificate } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import { FIXED_LIMITS } from '../config/limits.js';

export interface Finding {
  check: string;
  ok: boolean;
  message: string;
  advice?: string;
}

export interface CertificateInput {
  certFile: string;
  keyFile: string;
  cert: Buffer;
  key: Buffer;
  /** Host names users reach the gateway by, when the configuration says (web.public_url). */
  names: { key: string; host: string }[];
  now: number;
}

const DAY_MS = 86_400_000;

export function inspectCertificate(input: CertificateInput): Finding[] {
  let chain: X509Certificate[];
  try {
    chain = parseChain(input.cert);
  } catch (err) {
    return [{ check: 'tls.cert', ok: false, message: `tls.cert ${input.certFile} is not a PEM certificate: ${(err as Error).message}`, advice: 'point tls.cert at the PEM certificate (full chain) of the gateway' }];
  }
  const leaf = chain[0]!;
  return [keyMatches(leaf, input), chainComplete(chain, input.certFile), validity(chain, input.now), notSelfSigned(leaf, chain), names(leaf, input.names)];
}

function parseChain(pem: Buffer): X509Certificate[] {
  const blocks = pem.toString('utf8').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new Error('no "BEGIN CERTIFICATE" block');
  return blocks.map((block) => new X509Certificate(block));
}

function keyMatches(leaf: X509Certificate, input: CertificateInput): Finding {
  const check = 'tls.key';
  let matches: boolean;
  try {
    matches = leaf.checkPrivateKey(createPrivateKey(input.key));
  } catch (err) {
    return { check, ok: false, message: `tls.key ${input.keyFile} is not a PEM private key: ${(err as Error).message}`, advice: 'point tls.key at the private key of the certificate' };
  }
  return matches
    ? { check, ok: true, message: `tls.key ${input.keyFile} is the private key of the certificate` }
    : { check, ok: false, message: `tls.key ${input.keyFile} is not the private key of the certificate in tls.cert ${input.certFile}`, advice: 'configure the key that belongs to the certificate (or the certificate that belongs to the key)' };
}

/** Each certificate is issued by the next; the last is a root itself, or issued by one the system trusts. */
function chainComplete(chain: X509Certificate[], certFile: string): Finding {
  const check = 'tls.cert.chain';
  for (let i = 0; i + 1 < chain.length; i += 1) {
    if (!issuedBy(chain[i]!, chain[i + 1]!)) {
      return { check, ok: false, message: `the certificates in tls.cert ${certFile} are not a chain: number ${i + 2} did not issue number ${i + 1}`, advice: 'put the server certificate first, then each issuer in turn (as fullchain.pem has them)' };
    }
  }
  const last = chain[chain.length - 1]!;
  if (issuedBy(last, last)) return { check, ok: true, message: `the chain is complete (${chain.length} certificate${chain.length === 1 ? '' : 's'}, ending in its root)` };
  if (systemRoots().some((root) => issuedBy(last, root))) {
    return { check, ok: true, message: `the chain is complete (${chain.length} certificate${chain.length === 1 ? '' : 's'} up to a root the system trusts)` };
  }
  return {
    check,
    ok: false,
    message: `the chain in tls.cert ${certFile} is incomplete: the issuer of "${oneLine(last.subject)}" ("${oneLine(last.issuer)}") is neither in the file nor a root the system trusts`,
    advice: 'use the full chain (Let\'s Encrypt: fullchain.pem, not cert.pem); mail programs cannot fill in a missing intermediate',
  };
}

function validity(chain: X509Certificate[], now: number): Finding {
  const check = 'tls.cert.expiry';
  const leaf = chain[0]!;
  const notBefore = Date.parse(leaf.validFrom);
  if (now < notBefore) return { check, ok: false, message: `the certificate is not valid before ${iso(notBefore)}`, advice: "check the system clock, or the certificate's dates" };
  // The first certificate of the chain to expire is when mail programs start refusing it.
  const first = chain.reduce((soonest, cert) => (Date.parse(cert.validTo) < Date.parse(soonest.validTo) ? cert : soonest));
  const notAfter = Date.parse(first.validTo);
  const days = Math.floor((notAfter - now) / DAY_MS);
  const which = first === leaf ? 'the certificate' : `"${oneLine(first.subject)}" in its chain`;
  if (notAfter <= now) return { check, ok: false, message: `${which} expired on ${iso(notAfter)}`, advice: 'renew it and reload mailgate' };
  if (days < FIXED_LIMITS.certificate_expiry_warning_days) {
    return { check, ok: false, message: `${which} expires on ${iso(notAfter)}, in ${days} day${days === 1 ? '' : 's'}`, advice: 'renew it now (automatic renewal, such as certbot, normally does 30 days ahead: check why it did not)' };
  }
  return { check, ok: true, message: `the certificate is valid until ${iso(notAfter)} (${days} days)` };
}

function notSelfSigned(leaf: X509Certificate, chain: X509Certificate[]): Finding {
  const check = 'tls.cert.issuer';
  if (chain.length === 1 && issuedBy(leaf, leaf)) {
    return { check, ok: false, message: 'the certificate is self-signed: mail programs warn about it, or refuse it', advice: 'configure a certificate from a CA (Let\'s Encrypt, say) in [tls]: tls.cert, tls.key, and tls.self_signed = false' };
  }
  return { check, ok: true, message: `issued by "${oneLine(leaf.issuer)}"` };
}

function names(leaf: X509Certificate, wanted: CertificateInput['names']): Finding {
  const check = 'tls.cert.names';
  const listed = leaf.subjectAltName ?? '';
  for (const { key, host } of wanted) {
    const covered = net.isIP(host) ? leaf.checkIP(host) !== undefined : leaf.checkHost(host) !== undefined;
    if (!covered) {
      return { check, ok: false, message: `the certificate (${listed || oneLine(leaf.subject)}) does not cover ${host}, the host of ${key}`, advice: `use a certificate that names ${host}, or correct ${key}` };
    }
  }
  return { check, ok: true, message: `names: ${listed ? listed.replace(/DNS:|IP Address:/g, '') : oneLine(leaf.subject)}` };
}

function issuedBy(cert: X509Certificate, issuer: X509Certificate): boolean {
  try {
    return cert.checkIssued(issuer) && cert.verify(issuer.publicKey);
  } catch {
    return false;
  }
}

let roots: X509Certificate[] | null = null;
function systemRoots(): X509Certificate[] {
  roots ??= tls.rootCertificates.map((pem) => new X509Certificate(pem));
  return roots;
}

function iso(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

/** X.509 names print one attribute per line. */
function oneLine(name: string): string {
  return name.split('\n').filter(Boolean).join(', ');
}

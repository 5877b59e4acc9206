/**
 * What `mailgate check` says about each of the gateway's own certificates
 * ([tls], or each [[tls.certificates]] entry): the key belongs to it, the
 * chain in the file is complete (the rule serve applies, session/
 * certificates.ts), it is valid now and not about to expire, it is not
 * self-signed, and it covers the names it is configured for and the one
 * users type (web.public_url). Serve refuses the first two and only logs
 * the rest; the checklist reports each, with what to do when it fails.
 */
import { createPrivateKey, X509Certificate } from 'node:crypto';
import net from 'node:net';
import { FIXED_LIMITS } from '../config/limits.js';
import { chainGap } from '../session/certificates.js';

export interface Finding {
  check: string;
  ok: boolean;
  message: string;
  advice?: string;
}

export interface CertificateInput {
  /** How the configuration names it: `tls` or `tls.certificates[1]`. */
  key: string;
  certFile: string;
  keyFile: string;
  cert: Buffer;
  privateKey: Buffer;
  /** Host names it must cover, and the key that says so (its SNI names; web.public_url for the default). */
  names: { key: string; host: string }[];
  now: number;
}

const DAY_MS = 86_400_000;

export function inspectCertificate(input: CertificateInput): Finding[] {
  const { key } = input;
  let chain: X509Certificate[];
  try {
    chain = parseChain(input.cert);
  } catch (err) {
    return [{ check: `${key}.cert`, ok: false, message: `${key}.cert ${input.certFile} is not a PEM certificate: ${(err as Error).message}`, advice: `point ${key}.cert at the PEM certificate (full chain) of the gateway` }];
  }
  const leaf = chain[0]!;
  return [keyMatches(leaf, input), chainComplete(chain, input), validity(chain, input), notSelfSigned(leaf, chain, input), names(leaf, input)];
}

function parseChain(pem: Buffer): X509Certificate[] {
  const blocks = pem.toString('latin1').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new Error('no "BEGIN CERTIFICATE" block');
  return blocks.map((block) => new X509Certificate(block));
}

function keyMatches(leaf: X509Certificate, input: CertificateInput): Finding {
  const check = `${input.key}.key`;
  let matches: boolean;
  try {
    matches = leaf.checkPrivateKey(createPrivateKey(input.privateKey));
  } catch (err) {
    return { check, ok: false, message: `${check} ${input.keyFile} is not a PEM private key: ${(err as Error).message}`, advice: 'point it at the private key of the certificate' };
  }
  return matches
    ? { check, ok: true, message: `${check} ${input.keyFile} is the private key of the certificate` }
    : { check, ok: false, message: `${check} ${input.keyFile} is not the private key of the certificate in ${input.key}.cert ${input.certFile}`, advice: 'configure the key that belongs to the certificate (or the certificate that belongs to the key)' };
}

function chainComplete(chain: X509Certificate[], input: CertificateInput): Finding {
  const check = `${input.key}.cert.chain`;
  const gap = chainGap(chain);
  if (!gap) return { check, ok: true, message: `the chain of ${input.key}.cert is complete (${chain.length} certificate${chain.length === 1 ? '' : 's'})` };
  return {
    check,
    ok: false,
    message: `the chain in ${input.key}.cert ${input.certFile} is incomplete: the issuer of "${oneLine(gap.subject)}" ("${oneLine(gap.issuer)}") is neither in the file nor a known root`,
    advice: "use the full chain (Let's Encrypt: fullchain.pem, not cert.pem), a private CA's root at the end; mail programs cannot fill in a missing intermediate",
  };
}

function validity(chain: X509Certificate[], input: CertificateInput): Finding {
  const check = `${input.key}.cert.expiry`;
  const { now } = input;
  const leaf = chain[0]!;
  const notBefore = Date.parse(leaf.validFrom);
  if (now < notBefore) return { check, ok: false, message: `${input.key}.cert is not valid before ${iso(notBefore)}`, advice: "check the system clock, or the certificate's dates" };
  // The first certificate of the chain to expire is when mail programs start refusing it.
  const first = chain.reduce((soonest, cert) => (Date.parse(cert.validTo) < Date.parse(soonest.validTo) ? cert : soonest));
  const notAfter = Date.parse(first.validTo);
  const days = Math.floor((notAfter - now) / DAY_MS);
  const which = first === leaf ? `${input.key}.cert` : `"${oneLine(first.subject)}" in the chain of ${input.key}.cert`;
  if (notAfter <= now) return { check, ok: false, message: `${which} expired on ${iso(notAfter)}`, advice: 'renew it, then reload mailgate (SIGHUP)' };
  if (days < FIXED_LIMITS.certificate_expiry_warning_days) {
    return { check, ok: false, message: `${which} expires on ${iso(notAfter)}, in ${days} day${days === 1 ? '' : 's'}`, advice: 'renew it now, then reload mailgate (SIGHUP); automatic renewal (certbot) normally does it 30 days ahead: check why it did not' };
  }
  return { check, ok: true, message: `${input.key}.cert is valid until ${iso(notAfter)} (${days} days)` };
}

function notSelfSigned(leaf: X509Certificate, chain: X509Certificate[], input: CertificateInput): Finding {
  const check = `${input.key}.cert.issuer`;
  if (chain.length === 1 && leaf.subject === leaf.issuer && leaf.verify(leaf.publicKey)) {
    return { check, ok: false, message: `${input.key}.cert is self-signed: mail programs warn about it, or refuse it`, advice: "configure a certificate from a CA (Let's Encrypt, say) in [tls]: tls.cert, tls.key, and tls.self_signed = false" };
  }
  return { check, ok: true, message: `${input.key}.cert is issued by "${oneLine(leaf.issuer)}"` };
}

function names(leaf: X509Certificate, input: CertificateInput): Finding {
  const check = `${input.key}.cert.names`;
  const listed = leaf.subjectAltName ?? '';
  for (const { key, host } of input.names) {
    const covered = net.isIP(host) ? leaf.checkIP(host) !== undefined : leaf.checkHost(host.startsWith('*.') ? `sni-check${host.slice(1)}` : host) !== undefined;
    if (!covered) {
      return { check, ok: false, message: `${input.key}.cert (${listed || oneLine(leaf.subject)}) does not cover ${host}, named by ${key}`, advice: `use a certificate that names ${host}, or correct ${key}` };
    }
  }
  return { check, ok: true, message: `${input.key}.cert names: ${listed ? listed.replace(/DNS:|IP Address:/g, '') : oneLine(leaf.subject)}` };
}

function iso(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

/** X.509 names print one attribute per line. */
function oneLine(name: string): string {
  return name.split('\n').filter(Boolean).join(', ');
}

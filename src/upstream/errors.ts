/**
 * What upstream answers mean, as the one error type of the project (RegistryError from
 * oci/errors.ts): 404 is the caller's "unknown" code, 429 TOOMANYREQUESTS with its Retry-After,
 * 416 RANGE_INVALID with its Content-Range; from the upstream itself, 401 is a refusal of the
 * mirror's credentials (or a sign it needs some) and 403 DENIED, while a redirect target's
 * 401/403 is never taken for the registry's own refusal; anything else is UPSTREAM_ERROR.
 * Retryable statuses are marked transient for the retry loop (retry.ts).
 *
 * A summary of the upstream's error body (its first OCI error message) goes into messages, with
 * control characters removed and any secret we hold scrubbed out: credentials and tokens never
 * appear in messages or logs. Network failures are named by transport.ts, which alone knows
 * fetch's failure messages (a credential-free reason, never a raw message).
 */
import type { UpstreamConfig } from "../config/upstreams.ts";
import { type ErrorCode, RegistryError } from "../oci/errors.ts";
import { hasCredentials } from "./auth.ts";
import { parseRetryAfter } from "./rate_limits.ts";
import { isRetryableStatus, markTransient } from "./retry.ts";
import { describeHost, readText, upstreamHost } from "./transport.ts";

const MAX_ERROR_BODY_BYTES = 16 << 10;

/** What a failed request was for, as messages name it. */
export interface FailedRequest {
  upstream: UpstreamConfig;
  repository: string;
  /** Error code for 404 (MANIFEST_UNKNOWN, BLOB_UNKNOWN, NAME_UNKNOWN). */
  notFound: ErrorCode;
  /** What was asked for, e.g. `manifest library/alpine:3.19`. */
  what: string;
}

/**
 * The RegistryError for a non-2xx answer to `target` (its body is read, at most 16 KiB, and
 * released); a retryable status is marked transient with the Retry-After upstream sent.
 * `authorized`: whether the request carried an Authorization header.
 */
export async function responseError(
  response: Response,
  target: FailedRequest,
  url: URL,
  authorized: boolean,
): Promise<RegistryError> {
  const summary = await errorSummary(response, secretsOf(target.upstream));
  const error = classify(response, target, url, authorized, summary);
  if (isRetryableStatus(response.status)) {
    markTransient(error, parseRetryAfter(response.headers.get("retry-after"), Date.now()));
  }
  return error;
}

function classify(
  response: Response,
  target: FailedRequest,
  url: URL,
  authorized: boolean,
  summary: string,
): RegistryError {
  const { upstream, repository, what } = target;
  const status = response.status;
  const fromUpstream = url.host === upstreamHost(upstream);
  const where = describeHost(url, upstream);
  if (status === 404) {
    return new RegistryError(target.notFound, `${where} says ${what} is unknown${summary}`);
  }
  if (status === 429) return tooManyRequests(where, response, summary);
  if (status === 416) {
    const contentRange = response.headers.get("content-range");
    return new RegistryError("RANGE_INVALID", `${where}: requested range not satisfiable`, {
      headers: contentRange ? { "Content-Range": contentRange } : {},
    });
  }
  if (fromUpstream && status === 401) {
    return authorized && hasCredentials(upstream)
      ? rejectedCredentials(upstream, repository)
      : new RegistryError(
        "UPSTREAM_ERROR",
        `upstream ${upstream.host} refused the mirror access to ${repository} (401): the ` +
          `repository may not exist, or the mirror needs credentials for it${summary}`,
      );
  }
  if (fromUpstream && status === 403) {
    return new RegistryError("DENIED", `${where} denied access to ${repository}${summary}`);
  }
  return new RegistryError("UPSTREAM_ERROR", `${where} answered ${status} for ${what}${summary}`);
}

/** Upstream asked not to be called for `waitMs` more: say so without calling it. */
export function throttled(upstream: UpstreamConfig, waitMs: number): RegistryError {
  const seconds = Math.max(1, Math.ceil(waitMs / 1000));
  return new RegistryError(
    "TOOMANYREQUESTS",
    `upstream ${upstream.host} is rate limiting the mirror; retry in ${seconds} s`,
    { headers: { "Retry-After": String(seconds) } },
  );
}

/** Upstream refused the configured credentials (not the client's: they are never sent). */
export function rejectedCredentials(upstream: UpstreamConfig, repository: string): RegistryError {
  return new RegistryError(
    "UPSTREAM_ERROR",
    `upstream ${upstream.host} rejected the mirror's credentials for ${repository} ` +
      `(namespace ${upstream.namespace})`,
  );
}

/** 429 from `where`, passing its Retry-After on to the client. */
export function tooManyRequests(where: string, response: Response, summary: string): RegistryError {
  const retryAfter = response.headers.get("retry-after");
  return new RegistryError("TOOMANYREQUESTS", `${where} is rate limiting the mirror${summary}`, {
    headers: retryAfter ? { "Retry-After": retryAfter } : {},
  });
}

/** What error summaries must never show: the configured password. */
export function secretsOf(upstream: UpstreamConfig): string[] {
  return upstream.password ? [upstream.password] : [];
}

/**
 * Reads at most 16 KiB of an error body and returns `: <first OCI error message>` (or ""),
 * with control characters removed, capped, and any secret we hold scrubbed out.
 */
export async function errorSummary(response: Response, secrets: string[]): Promise<string> {
  if (!response.body) return "";
  let text: string;
  try {
    text = await readText(response.body, MAX_ERROR_BODY_BYTES, true);
  } catch {
    return "";
  }
  let message: string | undefined;
  try {
    const parsed = JSON.parse(text) as { errors?: { message?: unknown; code?: unknown }[] };
    const first = parsed.errors?.[0];
    if (first && typeof first.message === "string" && first.message !== "") {
      message = first.message;
    } else if (first && typeof first.code === "string") message = first.code;
  } catch {
    message = undefined;
  }
  if (!message) return "";
  for (const secret of secrets) message = message.split(secret).join("***");
  // deno-lint-ignore no-control-regex
  message = message.replace(/[\u0000-\u001f\u007f]+/g, " ").trim().slice(0, 200);
  return message ? `: ${message}` : "";
}

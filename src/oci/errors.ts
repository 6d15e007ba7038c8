/**
 * The one error type that crosses layers. Every module throws a RegistryError with an OCI
 * error code; server.ts alone turns it into an HTTP response (see `errorResponse`).
 */

/** OCI distribution error codes (plus a few registry-level ones) and the status each maps to. */
export const ERROR_STATUS = {
  BLOB_UNKNOWN: 404,
  BLOB_UPLOAD_INVALID: 400,
  BLOB_UPLOAD_UNKNOWN: 404,
  DIGEST_INVALID: 400,
  MANIFEST_BLOB_UNKNOWN: 404,
  MANIFEST_INVALID: 400,
  MANIFEST_UNKNOWN: 404,
  NAME_INVALID: 400,
  NAME_UNKNOWN: 404,
  SIZE_INVALID: 400,
  UNAUTHORIZED: 401,
  DENIED: 403,
  UNSUPPORTED: 405,
  TOOMANYREQUESTS: 429,
  RANGE_INVALID: 416,
  /** The HTTP request itself is malformed: Host header, request target, percent-encoding. */
  BAD_REQUEST: 400,
  /** The request target is longer than the server reads. */
  URI_TOO_LONG: 414,
  /** The request headers are larger than the server reads. */
  HEADERS_TOO_LARGE: 431,
  /** Upstream answered with something unusable (5xx, garbage, wrong digest). */
  UPSTREAM_ERROR: 502,
  /** Upstream or storage cannot be reached and nothing is cached. */
  UNAVAILABLE: 503,
  /**
   * The store cannot take a write now: disk full or over quota (ENOSPC, EDQUOT), an S3 quota,
   * 507, or 503 SlowDown on a write. A storage condition, never an upstream one: the mirror
   * serves what is cached and passes the rest through uncached.
   */
  INSUFFICIENT_STORAGE: 507,
  UNKNOWN: 500,
} as const;

export type ErrorCode = keyof typeof ERROR_STATUS;

export class RegistryError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly detail: unknown;
  /** Extra response headers, e.g. WWW-Authenticate for 401 or Content-Range for 416. */
  readonly headers: Record<string, string>;

  constructor(
    code: ErrorCode,
    message: string,
    options: {
      detail?: unknown;
      status?: number;
      headers?: Record<string, string>;
      cause?: unknown;
    } = {},
  ) {
    super(message, { cause: options.cause });
    this.name = "RegistryError";
    this.code = code;
    this.status = options.status ?? ERROR_STATUS[code];
    this.detail = options.detail ?? {};
    this.headers = options.headers ?? {};
  }

  /** The OCI JSON error body. */
  toJSON(): { errors: { code: string; message: string; detail: unknown }[] } {
    return { errors: [{ code: this.code, message: this.message, detail: this.detail }] };
  }
}

/** True when `e` says that upstream or storage could not be reached or answered badly. */
export function isUnavailable(e: unknown): boolean {
  return e instanceof RegistryError &&
    (e.code === "UNAVAILABLE" || e.code === "UPSTREAM_ERROR" || e.code === "TOOMANYREQUESTS");
}

/** True when `e` says that the store could not take a write for lack of space (or quota). */
export function isStorageFull(e: unknown): boolean {
  return e instanceof RegistryError && e.code === "INSUFFICIENT_STORAGE";
}

/** The storage back-end the settings name, opened for a command, and closed after it. */
import type { Settings, StorageSettings } from "../config/cli.ts";
import type { Storage } from "../storage/storage.ts";
import type { Streaming } from "../runtime/streaming.ts";

export interface OpenedStorage {
  storage: Storage;
  /** Where downloads are spooled before they are verified and published. */
  spoolDir: string;
}

export async function openStorage(
  settings: StorageSettings,
  { keepTemp = false, streaming }: { keepTemp?: boolean; streaming?: Streaming } = {},
): Promise<OpenedStorage> {
  // Each back-end is imported only when chosen: a filesystem mirror never loads the AWS SDK.
  if (settings.kind === "filesystem") {
    const { FilesystemStorage } = await import("../storage/filesystem.ts");
    // Cleans what a killed predecessor left half-written before anything is served.
    const storage = new FilesystemStorage(settings.root, { keepTemp, streaming });
    // Spools live beside the store so that publishing a verified download is a rename.
    return { storage, spoolDir: storage.tempDir };
  }
  const { S3Storage } = await import("../storage/s3.ts");
  const storage = new S3Storage({
    bucket: settings.bucket,
    endpoint: settings.endpoint,
    region: settings.region,
    prefix: settings.prefix,
    accessKeyId: settings.accessKeyId,
    secretAccessKey: settings.secretAccessKey,
    redirect: settings.redirect,
    streaming,
  });
  await storage.init(); // a wrong bucket or unreachable endpoint fails here, not on a pull
  // A directory of this process's own (removed at shutdown), inside --spool-dir when given.
  if (settings.spoolDir) await Deno.mkdir(settings.spoolDir, { recursive: true });
  const spoolDir = await Deno.makeTempDir({
    dir: settings.spoolDir,
    prefix: "oci-registry-spool-",
  });
  return { storage, spoolDir };
}

export async function closeStorage(
  { storage, spoolDir }: OpenedStorage,
  settings: Settings,
): Promise<void> {
  await storage.close?.();
  // S3 spools live in a directory of this process's own; the filesystem's .tmp stays.
  if (settings.storage.kind === "s3") {
    await Deno.remove(spoolDir, { recursive: true }).catch(() => {});
  }
}

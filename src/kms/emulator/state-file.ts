import { readFile, rename, writeFile } from 'node:fs/promises';

import type { PersistedState } from './key-store.js';

/**
 * Writes a KeyStore snapshot to a JSON file atomically (temporary file, then
 * rename). Changes that arrive while a write runs are coalesced into one more write.
 */
export class StateFile {
  private readonly path: string;
  private readonly temporaryPath: string;
  private dirty = false;
  private writing: Promise<void> | undefined;
  private lastError: Error | undefined;

  constructor(path: string) {
    this.path = path;
    this.temporaryPath = `${path}.${process.pid}.tmp`;
  }

  /** Reads the file, or returns undefined when it does not exist. */
  async load(): Promise<PersistedState | undefined> {
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw error;
    }
    return JSON.parse(text) as PersistedState;
  }

  /** Marks the store changed. `snapshot` is called when the next write starts. */
  schedule(snapshot: () => PersistedState): void {
    this.dirty = true;
    if (this.writing === undefined) this.writing = this.writeUntilClean(snapshot);
  }

  /** Waits until every scheduled change is on disk. Rejects if the last write failed. */
  async flush(): Promise<void> {
    while (this.writing !== undefined) await this.writing;
    if (this.lastError !== undefined) throw this.lastError;
  }

  private async writeUntilClean(snapshot: () => PersistedState): Promise<void> {
    while (this.dirty) {
      this.dirty = false;
      try {
        await writeFile(this.temporaryPath, JSON.stringify(snapshot()), { mode: 0o600 });
        await rename(this.temporaryPath, this.path);
        this.lastError = undefined;
      } catch (error) {
        this.lastError = error as Error;
        console.error(`KMS emulator: writing state file ${this.path} failed: ${(error as Error).message}`);
      }
    }
    // Cleared in the same synchronous step as the last `dirty` check, so a change
    // scheduled after it always starts a new write.
    this.writing = undefined;
  }
}

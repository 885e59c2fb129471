/**
 * Tracks which source chunks are settled (every row written, quarantined or
 * found changed) so that the job can record a checkpoint: the last key of
 * the longest settled prefix. Rows before it never need to be read again.
 */
export class CheckpointTracker {
  #chunks: Array<{ lastKey: string; pending: number }> = [];
  #base = 0;
  #checkpoint: string | null = null;

  /** Registers a chunk of `rows` rows and returns its handle. */
  open(lastKey: string, rows: number): number {
    this.#chunks.push({ lastKey, pending: rows });
    const handle = this.#base + this.#chunks.length - 1;
    this.#advance();
    return handle;
  }

  /** Marks `count` rows of the chunk as settled. */
  settle(handle: number, count = 1): void {
    const chunk = this.#chunks[handle - this.#base];
    if (chunk === undefined) throw new Error(`checkpoint chunk ${handle} is not open`);
    chunk.pending -= count;
    this.#advance();
  }

  #advance(): void {
    while (this.#chunks.length > 0 && this.#chunks[0]!.pending <= 0) {
      this.#checkpoint = this.#chunks[0]!.lastKey;
      this.#chunks.shift();
      this.#base += 1;
    }
  }

  /** Last key of the settled prefix, or null when nothing is settled yet. */
  get checkpoint(): string | null {
    return this.#checkpoint;
  }
}

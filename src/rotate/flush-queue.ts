import type { FlushResult, QuarantinedRow, RewrappedRow, Writer } from './writer.js';

export interface FlushQueueOptions {
  writer: Writer;
  /** Rows per flush. */
  flushRows: number;
  /** A partial buffer is flushed after this long. */
  flushIntervalMs: number;
  /** Returns the rows scanned since the last call, for the job's counters. */
  takeScanned: () => number;
  /** Returns the checkpoint to record with the next flush. */
  checkpoint: () => string | null;
  /** Called after each committed flush with its result and the rows it settled per source chunk. */
  onFlushed: (result: FlushResult, settled: Map<number, number>) => void;
}

/**
 * Buffers the writer's input and runs one flush at a time. When a flush is
 * running and the buffer holds another full flush, `add*` waits: that wait
 * is the backpressure that keeps memory flat whatever the row count.
 */
export class FlushQueue {
  #options: FlushQueueOptions;
  #rewrapped: RewrappedRow[] = [];
  #quarantined: QuarantinedRow[] = [];
  #chunks = new Map<number, number>();
  #running: Promise<void> | null = null;
  #timer: NodeJS.Timeout;
  #failure: Error | null = null;
  #quarantinedCount = 0;

  constructor(options: FlushQueueOptions) {
    this.#options = options;
    this.#timer = setInterval(() => {
      if (this.#running === null && this.#size() > 0) this.#start();
    }, options.flushIntervalMs);
    this.#timer.unref();
  }

  /** Rows quarantined by committed flushes. */
  get quarantinedCount(): number {
    return this.#quarantinedCount;
  }

  async addRewrapped(row: RewrappedRow, chunk: number): Promise<void> {
    this.#rewrapped.push(row);
    await this.#added(chunk);
  }

  async addQuarantined(row: QuarantinedRow, chunk: number): Promise<void> {
    this.#quarantined.push(row);
    await this.#added(chunk);
  }

  async #added(chunk: number): Promise<void> {
    this.#chunks.set(chunk, (this.#chunks.get(chunk) ?? 0) + 1);
    if (this.#failure !== null) throw this.#failure;
    if (this.#size() < this.#options.flushRows) return;
    while (this.#running !== null && this.#size() >= this.#options.flushRows) await this.#running;
    if (this.#failure !== null) throw this.#failure;
    if (this.#running === null && this.#size() >= this.#options.flushRows) this.#start();
  }

  #size(): number {
    return this.#rewrapped.length + this.#quarantined.length;
  }

  #start(): void {
    const rewrapped = this.#rewrapped;
    const quarantined = this.#quarantined;
    const chunks = this.#chunks;
    this.#rewrapped = [];
    this.#quarantined = [];
    this.#chunks = new Map();
    const input = { rewrapped, quarantined, scanned: this.#options.takeScanned(), checkpoint: this.#options.checkpoint() };
    this.#running = this.#options.writer
      .flush(input)
      .then((result) => {
        this.#quarantinedCount += quarantined.length + result.rejected;
        this.#options.onFlushed(result, chunks);
      })
      .catch((error: unknown) => {
        this.#failure = error as Error;
      })
      .finally(() => {
        this.#running = null;
      });
  }

  /**
   * Flushes everything buffered and waits for it; throws if any flush failed
   * for good. No flush starts after it returns or throws.
   */
  async drain(): Promise<void> {
    try {
      for (;;) {
        if (this.#running !== null) await this.#running;
        if (this.#failure !== null) throw this.#failure;
        if (this.#size() === 0) break;
        this.#start();
      }
    } finally {
      clearInterval(this.#timer);
    }
  }
}

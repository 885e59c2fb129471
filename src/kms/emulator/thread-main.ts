import { parentPort, workerData } from 'node:worker_threads';
import { startEmulator, type EmulatorOptions } from './server.js';

// Entry point of the emulator thread started by `startEmulatorInThread`.
const port = parentPort!;
startEmulator(workerData as EmulatorOptions).then(
  (emulator) => {
    port.on('message', (message) => {
      if (message === 'close') {
        void emulator.close().finally(() => port.close());
      }
    });
    port.postMessage({ url: emulator.url });
  },
  (error: unknown) => {
    port.postMessage({ error: (error as Error).message });
  },
);

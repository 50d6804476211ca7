import type {
  ConnectionStatus, RealtimeClientOptions, ResyncInfo, SharedStore, Update,
} from './index.js';

export interface UseWebSocketUpdatesOptions {
  /** Options of the shared client (used by the first component that mounts). */
  client?: RealtimeClientOptions;
  /** Called when updates may have been missed: refetch the snapshot. */
  onResync?: (info: ResyncInfo) => void;
  store?: SharedStore;
}

export function useWebSocketUpdates(
  callback: (update: Update) => void,
  options?: UseWebSocketUpdatesOptions,
): ConnectionStatus;

export const useRealtimeUpdates: typeof useWebSocketUpdates;

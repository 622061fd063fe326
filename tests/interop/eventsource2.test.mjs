// npm `eventsource` 2.0.2 (CommonJS, the version much older Node code still
// pins) against ssed. Loaded with `require`, the way its users load it; it
// is installed side by side with 4.x as the alias `eventsource2`.

import { createRequire } from 'node:module';
import { defineScenarios } from './lib/scenarios.mjs';
import { eventsUrl } from './lib/ssed.mjs';

const require = createRequire(import.meta.url);
const EventSource = require('eventsource2');

const adapter = {
  headerResume: true,
  async connect({ base, streams, lastEventId, lastEventIdHeader, types }) {
    // 2.x takes headers in its init dict; a `Last-Event-ID` there becomes its
    // starting lastEventId (sent on the first request and kept for retries).
    const init = lastEventIdHeader ? { headers: { 'Last-Event-ID': lastEventIdHeader } } : {};
    const es = new EventSource(eventsUrl(base, streams, lastEventId).toString(), init);
    const st = { events: [], opens: 0, errors: 0 };
    es.addEventListener('open', () => { st.opens += 1; });
    es.addEventListener('error', () => { st.errors += 1; });
    for (const t of ['message', ...types]) {
      es.addEventListener(t, (e) => st.events.push({ type: e.type, id: e.lastEventId, data: e.data }));
    }
    return {
      snapshot: async () => ({ ...st, events: [...st.events], readyState: es.readyState }),
      close: async () => es.close(),
    };
  },
};

defineScenarios('eventsource 2.0.2 (npm, CommonJS)', adapter);

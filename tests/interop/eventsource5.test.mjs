// npm `eventsource` 5.1.5 (ESM only, built on `fetch`) against ssed,
// installed side by side with 4.x as the alias `eventsource5`. Its
// package.json says `engines.node >= 22.12` (npm warns EBADENGINE on
// Node 20); this suite runs it on Node 20, where `import` and the global
// `fetch` are all it uses.

import { EventSource } from 'eventsource5';
import { defineScenarios } from './lib/scenarios.mjs';
import { eventsUrl } from './lib/ssed.mjs';

const adapter = {
  headerResume: true,
  async connect({ base, streams, lastEventId, lastEventIdHeader, types }) {
    // 5.x has no `headers` option: request headers go through its `fetch`
    // option. The client's own Last-Event-ID (set once it has seen an id)
    // wins over the one given here.
    const init = lastEventIdHeader
      ? {
        fetch: (url, o) => fetch(url, {
          ...o,
          headers: { 'Last-Event-ID': lastEventIdHeader, ...o.headers },
        }),
      }
      : {};
    const es = new EventSource(eventsUrl(base, streams, lastEventId), init);
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

defineScenarios('eventsource 5.1.5 (npm, ESM)', adapter);

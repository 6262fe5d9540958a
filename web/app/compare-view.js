// A stored `compare` or `aird` result. (Figures come in a later step; the numbers are all here.)

import { reportTables } from './report-view.js';

export function compareResult(result) {
  return reportTables(result.report);
}

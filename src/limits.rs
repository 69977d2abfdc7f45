//! Every bound in the program as a named constant, grouped by the stage that enforces it, with
//! compile-time assertions between related limits. Names carry their unit last.

// ---- guac: protocol parser ----

// ---- render: display model ----

// ---- encode ----

// ---- queue ----

// ---- upload ----

// ---- ingest: tap, segments, spool ----

// ---- serve: HTTP ----

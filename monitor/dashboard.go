package monitor

import "embed"

// dashboardFS holds the dashboard page: plain HTML, CSS and hand-written
// JavaScript drawing on <canvas>, with no library and no CDN.
//
//go:embed dashboard/index.html dashboard/dashboard.css dashboard/dashboard.js
var dashboardFS embed.FS

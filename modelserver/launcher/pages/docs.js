// Starts Swagger UI on /openapi.json (loaded after swagger-ui-bundle.js by /docs).
// The document names no `servers`, so "Try it out" calls this page's own origin; the page's
// Content-Security-Policy (connect-src 'self') refuses any other.
"use strict";
window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout", // no top bar: this page documents this server only
    deepLinking: true,
    queryConfigEnabled: false, // never take a document URL from the page's query string
    validatorUrl: null, // no badge from swagger.io's online validator
    tryItOutEnabled: false, // a request runs a model: "Try it out" first
    supportedSubmitMethods: ["get", "post"],
    displayRequestDuration: true,
    defaultModelsExpandDepth: 0,
  });
});

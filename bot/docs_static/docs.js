"use strict";
// Swagger UI for /openapi.json; "Authorize" takes an agent's API token (bearer)
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: false,  // the token is not kept in localStorage
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});

import requests
import base64
 
# Define the URL and the payload to send.
url = "https://modelapi.holmesai.xyz/$SERVICE_ID/v1/images/generate"
 
# Set Authorization header
Headers = { "Authorization" : "Bearer {}".format("$API_KEY") }
 
payload = {
    "model": "$MODEL",
    "prompt": "puppy dog",
    "steps": 30,
    "height": 512,
    "width": 512,
    "cfg_scale": 10,
}
 
# Send said payload to said URL through the API.
response = requests.post(url=f'{url}', json=payload, headers=Headers, stream=True)
 
# Decode and save the image.
with open("output.png", 'wb') as f:
    for chunk in response.iter_content(chunk_size=8192):
        f.write(chunk)
